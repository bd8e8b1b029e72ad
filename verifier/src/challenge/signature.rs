//! The secure element's ECDSA signature over a challenge.
//!
//! Encodings are checked with RustCrypto's `p256`/`p384` (exact lengths, strict DER,
//! `0 < r, s < n`); the signature is verified with aws-lc-rs, the fastest verifier on this
//! machine (see docs/BENCHMARKS.md). Parse a [`DeviceKey`] once per device and reuse it.

use aws_lc_rs::digest::{self, Digest, SHA256, SHA384};
use aws_lc_rs::signature::{self as sig, ParsedPublicKey};
use const_oid::ObjectIdentifier;
use der::Decode;
use serde::Serialize;
use x509_cert::Certificate;
use x509_cert::spki::SubjectPublicKeyInfoOwned;

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// The curves secure elements sign with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Curve {
    #[serde(rename = "P-256")]
    P256,
    #[serde(rename = "P-384")]
    P384,
}

impl Curve {
    /// Bytes of one scalar (r or s).
    pub const fn scalar_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

impl std::fmt::Display for Curve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
        })
    }
}

/// What the secure element was given to sign.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DigestMode {
    /// The challenge itself is the digest (STSELib: `stse_ecc_generate_signature` over the
    /// 32-byte challenge). The default.
    #[default]
    Direct,
    /// The host computed SHA-256(challenge) and the SE signed that digest (X-CUBE-SAFEA1).
    Sha256,
    /// The host computed SHA-384(challenge) (P-384 parts).
    Sha384,
}

impl DigestMode {
    /// `direct`, `sha256`, `sha384`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(DigestMode::Direct),
            "sha256" | "sha-256" => Some(DigestMode::Sha256),
            "sha384" | "sha-384" => Some(DigestMode::Sha384),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DigestMode::Direct => "direct",
            DigestMode::Sha256 => "sha256",
            DigestMode::Sha384 => "sha384",
        }
    }
}

/// The hash of a COSE ECDSA algorithm: ES256 (-7) or ES384 (-35).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoseHash {
    Sha256,
    Sha384,
}

/// How the signature bytes are encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureFormat {
    /// `r‖s`, each a fixed-length big-endian scalar: what the SE returns.
    Raw,
    /// ASN.1 DER `ECDSA-Sig-Value`.
    Der,
    /// Raw if the length is exactly 2 × scalar length (and it parses), else DER.
    #[default]
    Auto,
}

impl SignatureFormat {
    /// `raw`, `der`, `auto`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "raw" => Some(SignatureFormat::Raw),
            "der" => Some(SignatureFormat::Der),
            "auto" => Some(SignatureFormat::Auto),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SignatureFormat::Raw => "raw",
            SignatureFormat::Der => "der",
            SignatureFormat::Auto => "auto",
        }
    }
}

/// Why a challenge signature was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "check", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SignatureError {
    #[error("device key is not an ECDSA P-256 or P-384 key: {detail}")]
    UnsupportedKey { detail: String },
    #[error("device key is not a valid {curve} point")]
    InvalidKey { curve: Curve },
    #[error("raw {curve} signature must be {expected} bytes (r‖s), got {len}")]
    BadLength { curve: Curve, len: usize, expected: usize },
    #[error("signature is not a strict DER ECDSA-Sig-Value for {curve}")]
    MalformedDer { curve: Curve },
    #[error("signature scalar r or s is zero or not below the {curve} group order")]
    ScalarOutOfRange { curve: Curve },
    #[error("in direct mode the challenge is the digest and must be 32 or 48 bytes, got {len}")]
    BadDigestLength { len: usize },
    #[error("signature does not verify with the device key ({curve}, digest mode {mode})")]
    Mismatch { curve: Curve, mode: &'static str },
}

impl SignatureError {
    /// A stable name for the failed check.
    pub fn check(&self) -> &'static str {
        match self {
            SignatureError::UnsupportedKey { .. } => "unsupported_key",
            SignatureError::InvalidKey { .. } => "invalid_key",
            SignatureError::BadLength { .. } => "bad_length",
            SignatureError::MalformedDer { .. } => "malformed_der",
            SignatureError::ScalarOutOfRange { .. } => "scalar_out_of_range",
            SignatureError::BadDigestLength { .. } => "bad_digest_length",
            SignatureError::Mismatch { .. } => "mismatch",
        }
    }
}

/// A device's public key, parsed once, ready to verify challenge answers.
#[derive(Clone, Debug)]
pub struct DeviceKey {
    curve: Curve,
    with_sha256: ParsedPublicKey,
    with_sha384: ParsedPublicKey,
}

impl DeviceKey {
    /// From an uncompressed (or compressed) SEC1 point.
    pub fn from_sec1(curve: Curve, point: &[u8]) -> Result<Self, SignatureError> {
        let (a256, a384): (
            &'static sig::EcdsaVerificationAlgorithm,
            &'static sig::EcdsaVerificationAlgorithm,
        ) = match curve {
            Curve::P256 => (&sig::ECDSA_P256_SHA256_ASN1, &sig::ECDSA_P256_SHA384_ASN1),
            Curve::P384 => (&sig::ECDSA_P384_SHA256_ASN1, &sig::ECDSA_P384_SHA384_ASN1),
        };
        // Reject SPKI-wrapped input here: this constructor takes exactly a point.
        if !matches!(point.first(), Some(0x02..=0x04)) {
            return Err(SignatureError::InvalidKey { curve });
        }
        let with_sha256 = ParsedPublicKey::new(a256, point).map_err(|_| SignatureError::InvalidKey { curve })?;
        let with_sha384 = ParsedPublicKey::new(a384, point).map_err(|_| SignatureError::InvalidKey { curve })?;
        Ok(DeviceKey {
            curve,
            with_sha256,
            with_sha384,
        })
    }

    /// From a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, SignatureError> {
        let spki = SubjectPublicKeyInfoOwned::from_der(der).map_err(|e| SignatureError::UnsupportedKey {
            detail: format!("not a SubjectPublicKeyInfo: {e}"),
        })?;
        Self::from_spki(&spki)
    }

    /// From the device certificate (DER).
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, SignatureError> {
        let cert = Certificate::from_der(der).map_err(|e| SignatureError::UnsupportedKey {
            detail: format!("not an X.509 certificate: {e}"),
        })?;
        Self::from_spki(cert.tbs_certificate().subject_public_key_info())
    }

    fn from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<Self, SignatureError> {
        if spki.algorithm.oid != ID_EC_PUBLIC_KEY {
            return Err(SignatureError::UnsupportedKey {
                detail: format!("algorithm {}", spki.algorithm.oid),
            });
        }
        let curve_oid = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .ok_or_else(|| SignatureError::UnsupportedKey {
                detail: "EC key without a named curve".into(),
            })?;
        let curve = if curve_oid == SECP256R1 {
            Curve::P256
        } else if curve_oid == SECP384R1 {
            Curve::P384
        } else {
            return Err(SignatureError::UnsupportedKey {
                detail: format!("curve {curve_oid}"),
            });
        };
        let point = spki
            .subject_public_key
            .as_bytes()
            .ok_or(SignatureError::InvalidKey { curve })?;
        Self::from_sec1(curve, point)
    }

    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// Verifies the SE's signature over `challenge`. Returns the format the signature was in.
    pub fn verify_challenge(
        &self,
        challenge: &[u8],
        signature: &[u8],
        format: SignatureFormat,
        mode: DigestMode,
    ) -> Result<SignatureFormat, SignatureError> {
        let digest = match mode {
            DigestMode::Direct => {
                let alg = match challenge.len() {
                    32 => &SHA256,
                    48 => &SHA384,
                    len => return Err(SignatureError::BadDigestLength { len }),
                };
                // The challenge is what the SE was handed as "the digest"; nothing is hashed.
                Digest::import_less_safe(challenge, alg)
                    .map_err(|_| SignatureError::BadDigestLength { len: challenge.len() })?
            }
            DigestMode::Sha256 => digest::digest(&SHA256, challenge),
            DigestMode::Sha384 => digest::digest(&SHA384, challenge),
        };
        let (der, used) = self.normalize(signature, format)?;
        let key = if digest.algorithm() == &SHA256 {
            &self.with_sha256
        } else {
            &self.with_sha384
        };
        key.verify_digest_sig(&digest, der.as_ref())
            .map_err(|_| SignatureError::Mismatch {
                curve: self.curve,
                mode: mode.as_str(),
            })?;
        Ok(used)
    }

    /// Verifies a COSE ECDSA signature (RFC 9053 section 2.1: exactly `r‖s`, never DER) over
    /// `message`, hashed with SHA-256 (ES256) or SHA-384 (ES384).
    pub fn verify_message_raw(&self, message: &[u8], signature: &[u8], hash: CoseHash) -> Result<(), SignatureError> {
        let (der, _) = self.normalize(signature, SignatureFormat::Raw)?;
        let (key, mode) = match hash {
            CoseHash::Sha256 => (&self.with_sha256, "sha256"),
            CoseHash::Sha384 => (&self.with_sha384, "sha384"),
        };
        key.verify_sig(message, der.as_ref())
            .map_err(|_| SignatureError::Mismatch {
                curve: self.curve,
                mode,
            })
    }

    /// Checks the encoding and returns the signature as strict DER.
    fn normalize(
        &self,
        signature: &[u8],
        format: SignatureFormat,
    ) -> Result<(DerSig, SignatureFormat), SignatureError> {
        let curve = self.curve;
        let expected = 2 * curve.scalar_len();
        match format {
            SignatureFormat::Raw if signature.len() != expected => Err(SignatureError::BadLength {
                curve,
                len: signature.len(),
                expected,
            }),
            SignatureFormat::Raw => from_raw(curve, signature).map(|d| (d, SignatureFormat::Raw)),
            SignatureFormat::Der => from_der(curve, signature).map(|d| (d, SignatureFormat::Der)),
            SignatureFormat::Auto if signature.len() == expected => match from_raw(curve, signature) {
                Ok(d) => Ok((d, SignatureFormat::Raw)),
                Err(raw_err) if signature.first() == Some(&0x30) => from_der(curve, signature)
                    .map(|d| (d, SignatureFormat::Der))
                    .map_err(|_| raw_err),
                Err(e) => Err(e),
            },
            SignatureFormat::Auto => from_der(curve, signature).map(|d| (d, SignatureFormat::Der)),
        }
    }
}

/// A strict-DER signature, on the stack.
enum DerSig {
    P256(p256::ecdsa::DerSignature),
    P384(p384::ecdsa::DerSignature),
}

impl AsRef<[u8]> for DerSig {
    fn as_ref(&self) -> &[u8] {
        match self {
            DerSig::P256(s) => s.as_bytes(),
            DerSig::P384(s) => s.as_bytes(),
        }
    }
}

fn from_raw(curve: Curve, raw: &[u8]) -> Result<DerSig, SignatureError> {
    let out_of_range = |_| SignatureError::ScalarOutOfRange { curve };
    Ok(match curve {
        Curve::P256 => DerSig::P256(p256::ecdsa::Signature::from_slice(raw).map_err(out_of_range)?.to_der()),
        Curve::P384 => DerSig::P384(p384::ecdsa::Signature::from_slice(raw).map_err(out_of_range)?.to_der()),
    })
}

fn from_der(curve: Curve, der: &[u8]) -> Result<DerSig, SignatureError> {
    let malformed = |_| SignatureError::MalformedDer { curve };
    Ok(match curve {
        Curve::P256 => DerSig::P256(p256::ecdsa::Signature::from_der(der).map_err(malformed)?.to_der()),
        Curve::P384 => DerSig::P384(p384::ecdsa::Signature::from_der(der).map_err(malformed)?.to_der()),
    })
}
