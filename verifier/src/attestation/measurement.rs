//! fleetward's signed firmware measurement: a COSE_Sign1, signed by the device key, over
//! a CBOR map with small integer keys (`docs/attestation.md` is the specification for firmware
//! authors):
//!
//! ```cddl
//! measurement-report = {
//!   1 => bstr .size 32,   ; nonce: the challenge, byte for byte
//!   2 => tstr,            ; firmware name (1..=64 bytes)
//!   3 => tstr,            ; firmware version (1..=64 bytes)
//!   4 => bstr .size 32,   ; SHA-256 of the firmware image
//!   5 => uint,            ; boot counter (monotonic)
//!   6 => bstr,            ; signer id: SHA-256 of the image-signing public key (1..=64 bytes)
//!   ? 7 => tstr,          ; device id; if present, must be the certificate's
//!   * int => any          ; other keys are ignored (duplicates are refused)
//! }
//! ```

use super::cbor::{self, ClaimMap};
use super::{AttestationError, SoftwareComponent, cose};
use crate::challenge::DeviceKey;
use serde::Serialize;
use subtle::ConstantTimeEq;

/// Claim keys of the measurement report.
pub mod keys {
    pub const NONCE: i64 = 1;
    pub const FIRMWARE_NAME: i64 = 2;
    pub const FIRMWARE_VERSION: i64 = 3;
    pub const DIGEST: i64 = 4;
    pub const BOOT_COUNTER: i64 = 5;
    pub const SIGNER_ID: i64 = 6;
    pub const DEVICE_ID: i64 = 7;
}

/// A verified measurement report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MeasurementReport {
    pub firmware_name: String,
    pub firmware_version: String,
    #[serde(serialize_with = "super::ser_hex")]
    pub digest: Vec<u8>,
    pub boot_counter: u64,
    #[serde(serialize_with = "super::ser_hex")]
    pub signer_id: Vec<u8>,
    pub device_id: Option<String>,
}

impl MeasurementReport {
    /// The report as one measured software component.
    pub fn component(&self) -> SoftwareComponent {
        SoftwareComponent {
            measurement_type: Some(self.firmware_name.clone()),
            measurement_value: self.digest.clone(),
            version: Some(self.firmware_version.clone()),
            signer_id: Some(self.signer_id.clone()),
            measurement_desc: Some("sha-256".into()),
        }
    }
}

/// Verifies a measurement report from `device_id` answering `nonce`, signed by `key`.
pub fn verify_measurement(
    token: &[u8],
    key: &DeviceKey,
    nonce: &[u8],
    device_id: &str,
) -> Result<MeasurementReport, AttestationError> {
    let payload = cose::verify_sign1(token, key)?;
    let claims = ClaimMap::decode(&payload)?;
    let required = |k: i64, name: &'static str| claims.get(k).ok_or(AttestationError::MissingClaim { claim: name });

    let token_nonce = cbor::bytes(required(keys::NONCE, "nonce")?, "nonce")?;
    if !bool::from(token_nonce.ct_eq(nonce)) {
        return Err(AttestationError::NonceMismatch);
    }
    let firmware_name = bounded_text(required(keys::FIRMWARE_NAME, "firmware_name")?, "firmware_name")?;
    let firmware_version = bounded_text(
        required(keys::FIRMWARE_VERSION, "firmware_version")?,
        "firmware_version",
    )?;
    let digest = cbor::bytes(required(keys::DIGEST, "digest")?, "digest")?;
    if digest.len() != 32 {
        return Err(AttestationError::invalid(
            "digest",
            format!("a SHA-256 digest is 32 bytes, got {}", digest.len()),
        ));
    }
    let boot_counter = u64::try_from(cbor::int(
        required(keys::BOOT_COUNTER, "boot_counter")?,
        "boot_counter",
    )?)
    .map_err(|_| AttestationError::invalid("boot_counter", "must be an unsigned 64-bit integer"))?;
    let signer_id = cbor::bytes(required(keys::SIGNER_ID, "signer_id")?, "signer_id")?;
    if signer_id.is_empty() || signer_id.len() > 64 {
        return Err(AttestationError::invalid(
            "signer_id",
            format!("must be 1 to 64 bytes, got {}", signer_id.len()),
        ));
    }
    let claimed_device = match claims.get(keys::DEVICE_ID) {
        Some(v) => Some(cbor::text(v, "device_id")?.to_owned()),
        None => None,
    };
    if let Some(claimed) = &claimed_device
        && claimed != device_id
    {
        return Err(AttestationError::DeviceMismatch {
            claimed: claimed.clone(),
            device_id: device_id.to_owned(),
        });
    }
    Ok(MeasurementReport {
        firmware_name,
        firmware_version,
        digest: digest.to_vec(),
        boot_counter,
        signer_id: signer_id.to_vec(),
        device_id: claimed_device,
    })
}

fn bounded_text(v: &ciborium::value::Value, claim: &'static str) -> Result<String, AttestationError> {
    let t = cbor::text(v, claim)?;
    if t.is_empty() || t.len() > 64 || t.chars().any(char::is_control) {
        return Err(AttestationError::invalid(
            claim,
            "must be 1 to 64 bytes of printable text",
        ));
    }
    Ok(t.to_owned())
}
