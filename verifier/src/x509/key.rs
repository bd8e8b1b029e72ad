//! Key-quality rules for keys we are asked to trust (CA registration) or to verify with.

use const_oid::ObjectIdentifier;
use der::Decode;
use serde::Serialize;
use std::fmt;
use x509_cert::spki::SubjectPublicKeyInfoOwned;

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const SECP521R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");

/// The smallest RSA modulus we accept (NIST SP 800-131A; what AWS IoT and browsers require).
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus rustls-webpki verifies.
pub const MAX_RSA_BITS: usize = 8192;

/// A public key fleetward can verify signatures of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum PublicKeyKind {
    EcdsaP256,
    EcdsaP384,
    EcdsaP521,
    Rsa { bits: usize },
    Ed25519,
}

impl fmt::Display for PublicKeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKeyKind::EcdsaP256 => f.write_str("ECDSA P-256"),
            PublicKeyKind::EcdsaP384 => f.write_str("ECDSA P-384"),
            PublicKeyKind::EcdsaP521 => f.write_str("ECDSA P-521"),
            PublicKeyKind::Rsa { bits } => write!(f, "RSA {bits}"),
            PublicKeyKind::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// Why a public key is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyError {
    #[error("unsupported public key algorithm {oid}")]
    UnsupportedAlgorithm { oid: String },
    #[error("unsupported elliptic curve {curve} (accepted: P-256, P-384, P-521)")]
    UnsupportedCurve { curve: String },
    #[error("{curve} public key is not a valid point on the curve")]
    InvalidPoint { curve: &'static str },
    #[error("RSA key of {bits} bits is too small (minimum {min})")]
    RsaTooSmall { bits: usize, min: usize },
    #[error("RSA key of {bits} bits is too large (maximum {max})")]
    RsaTooLarge { bits: usize, max: usize },
    #[error("RSA key is invalid: {reason}")]
    RsaInvalid { reason: &'static str },
    #[error("public key encoding is malformed: {detail}")]
    Malformed { detail: String },
}

/// Checks a SubjectPublicKeyInfo: a supported algorithm, a valid point on an accepted curve,
/// or an RSA modulus of at least [`MIN_RSA_BITS`] with a sane exponent.
pub fn inspect_public_key(spki: &SubjectPublicKeyInfoOwned) -> Result<PublicKeyKind, KeyError> {
    let key = spki.subject_public_key.as_bytes().ok_or_else(|| KeyError::Malformed {
        detail: "subjectPublicKey has unused bits".into(),
    })?;
    let oid = spki.algorithm.oid;
    if oid == ID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .ok_or_else(|| KeyError::Malformed {
                detail: "EC key without named curve".into(),
            })?
            .decode_as::<ObjectIdentifier>()
            .map_err(|_| KeyError::Malformed {
                detail: "EC parameters are not a named curve".into(),
            })?;
        use aws_lc_rs::signature as sig;
        let (kind, alg, name): (_, &'static dyn sig::VerificationAlgorithm, _) = if curve == SECP256R1 {
            (PublicKeyKind::EcdsaP256, &sig::ECDSA_P256_SHA256_ASN1, "P-256")
        } else if curve == SECP384R1 {
            (PublicKeyKind::EcdsaP384, &sig::ECDSA_P384_SHA384_ASN1, "P-384")
        } else if curve == SECP521R1 {
            (PublicKeyKind::EcdsaP521, &sig::ECDSA_P521_SHA512_ASN1, "P-521")
        } else {
            return Err(KeyError::UnsupportedCurve {
                curve: curve_name(&curve),
            });
        };
        // aws-lc decodes the SEC1 point and checks that it lies on the curve (and is not the
        // point at infinity); an invalid-curve point never reaches a signature check.
        sig::ParsedPublicKey::new(alg, key).map_err(|_| KeyError::InvalidPoint { curve: name })?;
        Ok(kind)
    } else if oid == RSA_ENCRYPTION {
        let rsa = pkcs1::RsaPublicKey::<der::asn1::UintRef<'_>>::from_der(key).map_err(|e| KeyError::Malformed {
            detail: format!("RSA key: {e}"),
        })?;
        let n = rsa.modulus.as_bytes();
        let e = rsa.public_exponent.as_bytes();
        let bits = bit_length(n);
        if bits < MIN_RSA_BITS {
            return Err(KeyError::RsaTooSmall {
                bits,
                min: MIN_RSA_BITS,
            });
        }
        if bits > MAX_RSA_BITS {
            return Err(KeyError::RsaTooLarge {
                bits,
                max: MAX_RSA_BITS,
            });
        }
        if n.last().is_none_or(|b| b & 1 == 0) {
            return Err(KeyError::RsaInvalid { reason: "even modulus" });
        }
        if e.last().is_none_or(|b| b & 1 == 0) || bit_length(e) < 2 || bit_length(e) > 32 {
            return Err(KeyError::RsaInvalid {
                reason: "public exponent must be odd, at least 3 and at most 2^32",
            });
        }
        Ok(PublicKeyKind::Rsa { bits })
    } else if oid == ID_ED25519 {
        if key.len() != 32 {
            return Err(KeyError::Malformed {
                detail: format!("Ed25519 key of {} bytes", key.len()),
            });
        }
        Ok(PublicKeyKind::Ed25519)
    } else {
        Err(KeyError::UnsupportedAlgorithm { oid: oid.to_string() })
    }
}

fn bit_length(be: &[u8]) -> usize {
    let be = super::cert::minimal(be);
    match be.first() {
        None | Some(0) => 0,
        Some(top) => be.len() * 8 - top.leading_zeros() as usize,
    }
}

fn curve_name(oid: &ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.2.840.10045.3.1.1" => "P-192 (1.2.840.10045.3.1.1)".into(),
        "1.3.132.0.33" => "P-224 (1.3.132.0.33)".into(),
        "1.3.132.0.10" => "secp256k1 (1.3.132.0.10)".into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_length(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bit_length(&[0x01]), 1);
        assert_eq!(bit_length(&[0x00]), 0);
        assert_eq!(bit_length(&[]), 0);
    }
}
