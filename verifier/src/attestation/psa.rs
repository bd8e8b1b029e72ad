//! The PSA Initial Attestation Token (RFC 9783, an EAT profile), as TF-M emits it: a
//! COSE_Sign1 signed by the Initial Attestation Key (on STM32 with STSAFE, the SE's key, so the
//! device certificate's key verifies it).
//!
//! Two claim vocabularies are accepted:
//! - **current** (`eat_profile` 265 = `tag:psacertified.org,2023:psa#tfm` or
//!   `http://arm.com/psa/2.0.0`): nonce 10, instance id 256, client id 2394, security lifecycle
//!   2395, implementation id 2396, boot seed 2397 (or EAT `bootseed` 268), certification
//!   reference 2398, software components 2399, verification service 2400;
//! - **legacy** `PSA_IOT_PROFILE_1` (-75000 … -75010), as older TF-M releases emit it.
//!
//! A software component is a map: measurement type 1, measurement value 2, version 4,
//! signer id 5, measurement description 6 (legacy security epoch 3 is ignored).

use super::cbor::{self, ClaimMap};
use super::{AttestationError, SoftwareComponent, cose};
use crate::challenge::DeviceKey;
use ciborium::value::Value;
use serde::Serialize;
use subtle::ConstantTimeEq;

/// The RFC 9783 profile name.
pub const PROFILE_RFC9783: &str = "tag:psacertified.org,2023:psa#tfm";
/// The PSA 2.0.0 profile name (drafts, TF-M 1.4–1.8).
pub const PROFILE_PSA_2_0_0: &str = "http://arm.com/psa/2.0.0";
/// The legacy profile name.
pub const PROFILE_IOT_1: &str = "PSA_IOT_PROFILE_1";

/// Claim keys.
pub mod keys {
    pub const NONCE: i64 = 10;
    pub const UEID: i64 = 256;
    pub const EAT_PROFILE: i64 = 265;
    pub const EAT_BOOTSEED: i64 = 268;
    pub const CLIENT_ID: i64 = 2394;
    pub const SECURITY_LIFECYCLE: i64 = 2395;
    pub const IMPLEMENTATION_ID: i64 = 2396;
    pub const BOOT_SEED: i64 = 2397;
    pub const CERTIFICATION_REFERENCE: i64 = 2398;
    pub const SOFTWARE_COMPONENTS: i64 = 2399;
    pub const VERIFICATION_SERVICE: i64 = 2400;

    pub const LEGACY_PROFILE: i64 = -75000;
    pub const LEGACY_CLIENT_ID: i64 = -75001;
    pub const LEGACY_SECURITY_LIFECYCLE: i64 = -75002;
    pub const LEGACY_IMPLEMENTATION_ID: i64 = -75003;
    pub const LEGACY_BOOT_SEED: i64 = -75004;
    pub const LEGACY_HARDWARE_VERSION: i64 = -75005;
    pub const LEGACY_SOFTWARE_COMPONENTS: i64 = -75006;
    pub const LEGACY_NO_SOFTWARE_MEASUREMENTS: i64 = -75007;
    pub const LEGACY_NONCE: i64 = -75008;
    pub const LEGACY_UEID: i64 = -75009;
    pub const LEGACY_VERIFICATION_SERVICE: i64 = -75010;

    pub const SW_MEASUREMENT_TYPE: i64 = 1;
    pub const SW_MEASUREMENT_VALUE: i64 = 2;
    pub const SW_VERSION: i64 = 4;
    pub const SW_SIGNER_ID: i64 = 5;
    pub const SW_MEASUREMENT_DESC: i64 = 6;
}

/// Which claim vocabulary the token used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PsaProfile {
    /// `tag:psacertified.org,2023:psa#tfm`.
    Rfc9783,
    /// `http://arm.com/psa/2.0.0`.
    Psa2,
    /// `PSA_IOT_PROFILE_1` (legacy keys -75000 …).
    IotProfile1,
}

impl PsaProfile {
    pub fn name(self) -> &'static str {
        match self {
            PsaProfile::Rfc9783 => PROFILE_RFC9783,
            PsaProfile::Psa2 => PROFILE_PSA_2_0_0,
            PsaProfile::IotProfile1 => PROFILE_IOT_1,
        }
    }
}

/// The major security lifecycle states (PSA Security Model, bits 15..8 of the claim).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleState {
    Unknown,
    AssemblyAndTest,
    PsaRotProvisioning,
    Secured,
    NonPsaRotDebug,
    RecoverablePsaRotDebug,
    Decommissioned,
}

impl LifecycleState {
    pub const ALL: [LifecycleState; 7] = [
        LifecycleState::Unknown,
        LifecycleState::AssemblyAndTest,
        LifecycleState::PsaRotProvisioning,
        LifecycleState::Secured,
        LifecycleState::NonPsaRotDebug,
        LifecycleState::RecoverablePsaRotDebug,
        LifecycleState::Decommissioned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleState::Unknown => "unknown",
            LifecycleState::AssemblyAndTest => "assembly_and_test",
            LifecycleState::PsaRotProvisioning => "psa_rot_provisioning",
            LifecycleState::Secured => "secured",
            LifecycleState::NonPsaRotDebug => "non_psa_rot_debug",
            LifecycleState::RecoverablePsaRotDebug => "recoverable_psa_rot_debug",
            LifecycleState::Decommissioned => "decommissioned",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }

    fn from_major(major: u16) -> Option<Self> {
        Some(match major {
            0x00 => LifecycleState::Unknown,
            0x10 => LifecycleState::AssemblyAndTest,
            0x20 => LifecycleState::PsaRotProvisioning,
            0x30 => LifecycleState::Secured,
            0x40 => LifecycleState::NonPsaRotDebug,
            0x50 => LifecycleState::RecoverablePsaRotDebug,
            0x60 => LifecycleState::Decommissioned,
            _ => return None,
        })
    }
}

/// The security lifecycle claim: the raw value and its major state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Lifecycle {
    pub raw: u16,
    pub state: LifecycleState,
}

impl std::fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (0x{:04x})", self.state.as_str(), self.raw)
    }
}

/// The claims of a verified PSA token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PsaClaims {
    pub profile: PsaProfile,
    /// UEID: 0x01 followed by 32 bytes (hex).
    #[serde(serialize_with = "super::ser_hex")]
    pub instance_id: Vec<u8>,
    #[serde(serialize_with = "super::ser_hex")]
    pub implementation_id: Vec<u8>,
    pub client_id: Option<i64>,
    pub lifecycle: Lifecycle,
    #[serde(serialize_with = "super::ser_opt_hex")]
    pub boot_seed: Option<Vec<u8>>,
    pub certification_reference: Option<String>,
    pub hardware_version: Option<String>,
    pub verification_service: Option<String>,
    pub software_components: Vec<SoftwareComponent>,
}

struct Vocabulary {
    profile: PsaProfile,
    nonce: i64,
    ueid: i64,
    client_id: i64,
    lifecycle: i64,
    implementation_id: i64,
    boot_seed: &'static [i64],
    software_components: i64,
    verification_service: i64,
}

const CURRENT: Vocabulary = Vocabulary {
    profile: PsaProfile::Rfc9783,
    nonce: keys::NONCE,
    ueid: keys::UEID,
    client_id: keys::CLIENT_ID,
    lifecycle: keys::SECURITY_LIFECYCLE,
    implementation_id: keys::IMPLEMENTATION_ID,
    boot_seed: &[keys::BOOT_SEED, keys::EAT_BOOTSEED],
    software_components: keys::SOFTWARE_COMPONENTS,
    verification_service: keys::VERIFICATION_SERVICE,
};

const LEGACY: Vocabulary = Vocabulary {
    profile: PsaProfile::IotProfile1,
    nonce: keys::LEGACY_NONCE,
    ueid: keys::LEGACY_UEID,
    client_id: keys::LEGACY_CLIENT_ID,
    lifecycle: keys::LEGACY_SECURITY_LIFECYCLE,
    implementation_id: keys::LEGACY_IMPLEMENTATION_ID,
    boot_seed: &[keys::LEGACY_BOOT_SEED],
    software_components: keys::LEGACY_SOFTWARE_COMPONENTS,
    verification_service: keys::LEGACY_VERIFICATION_SERVICE,
};

/// Verifies a PSA token answering `nonce`, signed by `key`, and decodes its claims. The
/// lifecycle and the software are judged by [`super::appraise`], not here.
pub fn verify_psa_token(token: &[u8], key: &DeviceKey, nonce: &[u8]) -> Result<PsaClaims, AttestationError> {
    let payload = cose::verify_sign1(token, key)?;
    let claims = ClaimMap::decode(&payload)?;
    decode_claims(&claims, nonce)
}

fn decode_claims(claims: &ClaimMap, nonce: &[u8]) -> Result<PsaClaims, AttestationError> {
    // The vocabulary: the EAT profile claim (current), or the legacy keys.
    let vocab = if let Some(p) = claims.get(keys::EAT_PROFILE) {
        let name = match p {
            Value::Text(t) => t.as_str(),
            other => {
                return Err(AttestationError::invalid(
                    "profile",
                    format!("expected a text string, got {}", cbor::kind(other)),
                ));
            }
        };
        match name {
            PROFILE_RFC9783 => CURRENT,
            PROFILE_PSA_2_0_0 => Vocabulary {
                profile: PsaProfile::Psa2,
                ..CURRENT
            },
            other => {
                return Err(AttestationError::UnknownProfile {
                    profile: other.chars().take(128).collect(),
                });
            }
        }
    } else if let Some(p) = claims.get(keys::LEGACY_PROFILE) {
        let name = cbor::text(p, "profile")?;
        if name != PROFILE_IOT_1 {
            return Err(AttestationError::UnknownProfile {
                profile: name.chars().take(128).collect(),
            });
        }
        LEGACY
    } else if claims.contains(keys::LEGACY_NONCE) {
        // Older TF-M builds omit the profile claim but use the legacy keys throughout.
        LEGACY
    } else {
        return Err(AttestationError::MissingClaim { claim: "profile" });
    };
    let required = |k: i64, name: &'static str| claims.get(k).ok_or(AttestationError::MissingClaim { claim: name });

    // Nonce first: a token for another challenge says nothing about now.
    let token_nonce = match required(vocab.nonce, "nonce")? {
        // EAT allows an array of nonces; PSA uses exactly one.
        Value::Array(items) if items.len() == 1 => cbor::bytes(&items[0], "nonce")?,
        Value::Array(items) => {
            return Err(AttestationError::invalid(
                "nonce",
                format!("exactly one nonce expected, got {}", items.len()),
            ));
        }
        v => cbor::bytes(v, "nonce")?,
    };
    if !matches!(token_nonce.len(), 32 | 48 | 64) {
        return Err(AttestationError::invalid(
            "nonce",
            format!("must be 32, 48 or 64 bytes, got {}", token_nonce.len()),
        ));
    }
    if !bool::from(token_nonce.ct_eq(nonce)) {
        return Err(AttestationError::NonceMismatch);
    }

    let instance_id = cbor::bytes(required(vocab.ueid, "instance_id")?, "instance_id")?;
    if instance_id.len() != 33 || instance_id[0] != 0x01 {
        return Err(AttestationError::invalid(
            "instance_id",
            "must be a 33-byte UEID of type RAND (0x01 followed by 32 bytes)",
        ));
    }
    let implementation_id = cbor::bytes(
        required(vocab.implementation_id, "implementation_id")?,
        "implementation_id",
    )?;
    if implementation_id.len() != 32 {
        return Err(AttestationError::invalid(
            "implementation_id",
            format!("must be 32 bytes, got {}", implementation_id.len()),
        ));
    }
    let client_id = match claims.get(vocab.client_id) {
        Some(v) => Some(
            i32::try_from(cbor::int(v, "client_id")?)
                .map(i64::from)
                .map_err(|_| AttestationError::invalid("client_id", "must fit a signed 32-bit integer"))?,
        ),
        None if vocab.profile == PsaProfile::IotProfile1 => None,
        None => return Err(AttestationError::MissingClaim { claim: "client_id" }),
    };
    let raw = u16::try_from(cbor::int(
        required(vocab.lifecycle, "security_lifecycle")?,
        "security_lifecycle",
    )?)
    .map_err(|_| AttestationError::invalid("security_lifecycle", "must be an unsigned 16-bit integer"))?;
    let state = LifecycleState::from_major(raw >> 8).ok_or_else(|| {
        AttestationError::invalid(
            "security_lifecycle",
            format!("0x{raw:04x} is not a PSA lifecycle state"),
        )
    })?;
    let boot_seed = match claims.get_any(vocab.boot_seed) {
        Some((_, v)) => {
            let seed = cbor::bytes(v, "boot_seed")?;
            if !(8..=32).contains(&seed.len()) {
                return Err(AttestationError::invalid(
                    "boot_seed",
                    format!("must be 8 to 32 bytes, got {}", seed.len()),
                ));
            }
            Some(seed.to_vec())
        }
        None => None,
    };
    let optional_text = |k: i64, name: &'static str| -> Result<Option<String>, AttestationError> {
        match claims.get(k) {
            Some(v) => Ok(Some(cbor::text(v, name)?.chars().take(256).collect())),
            None => Ok(None),
        }
    };
    let software_components = match claims.get(vocab.software_components) {
        Some(v) => {
            let items = cbor::array(v, "software_components")?;
            if items.is_empty() {
                return Err(AttestationError::invalid(
                    "software_components",
                    "must list at least one component",
                ));
            }
            if items.len() > 32 {
                return Err(AttestationError::invalid(
                    "software_components",
                    format!("at most 32 components, got {}", items.len()),
                ));
            }
            items
                .iter()
                .map(|item| component(item, vocab.profile))
                .collect::<Result<Vec<_>, _>>()?
        }
        None if vocab.profile == PsaProfile::IotProfile1 && claims.contains(keys::LEGACY_NO_SOFTWARE_MEASUREMENTS) => {
            Vec::new()
        }
        None => {
            return Err(AttestationError::MissingClaim {
                claim: "software_components",
            });
        }
    };
    Ok(PsaClaims {
        profile: vocab.profile,
        instance_id: instance_id.to_vec(),
        implementation_id: implementation_id.to_vec(),
        client_id,
        lifecycle: Lifecycle { raw, state },
        boot_seed,
        certification_reference: if vocab.profile == PsaProfile::IotProfile1 {
            None
        } else {
            optional_text(keys::CERTIFICATION_REFERENCE, "certification_reference")?
        },
        hardware_version: if vocab.profile == PsaProfile::IotProfile1 {
            optional_text(keys::LEGACY_HARDWARE_VERSION, "hardware_version")?
        } else {
            None
        },
        verification_service: optional_text(vocab.verification_service, "verification_service")?,
        software_components,
    })
}

fn component(item: &Value, profile: PsaProfile) -> Result<SoftwareComponent, AttestationError> {
    let map = ClaimMap::from_value(item.clone(), "software component").map_err(|_| {
        AttestationError::invalid(
            "software_components",
            "each component must be a CBOR map without repeated keys",
        )
    })?;
    let value = map
        .get(keys::SW_MEASUREMENT_VALUE)
        .ok_or(AttestationError::MissingClaim {
            claim: "measurement_value",
        })?;
    let measurement_value = cbor::bytes(value, "measurement_value")?;
    if !matches!(measurement_value.len(), 32 | 48 | 64) {
        return Err(AttestationError::invalid(
            "measurement_value",
            format!(
                "must be a 32, 48 or 64-byte hash, got {} bytes",
                measurement_value.len()
            ),
        ));
    }
    let signer_id = match map.get(keys::SW_SIGNER_ID) {
        Some(v) => {
            let s = cbor::bytes(v, "signer_id")?;
            if !matches!(s.len(), 32 | 48 | 64) {
                return Err(AttestationError::invalid(
                    "signer_id",
                    format!("must be a 32, 48 or 64-byte hash, got {} bytes", s.len()),
                ));
            }
            Some(s.to_vec())
        }
        None if profile == PsaProfile::IotProfile1 => None,
        None => return Err(AttestationError::MissingClaim { claim: "signer_id" }),
    };
    let text = |k: i64, name: &'static str| -> Result<Option<String>, AttestationError> {
        match map.get(k) {
            Some(v) => Ok(Some(cbor::text(v, name)?.chars().take(64).collect())),
            None => Ok(None),
        }
    };
    Ok(SoftwareComponent {
        measurement_type: text(keys::SW_MEASUREMENT_TYPE, "measurement_type")?,
        measurement_value: measurement_value.to_vec(),
        version: text(keys::SW_VERSION, "version")?,
        signer_id,
        measurement_desc: text(keys::SW_MEASUREMENT_DESC, "measurement_desc")?,
    })
}
