//! Registering a provisioning CA: only its owner may, and only a sound CA.
//!
//! Like AWS IoT's "verification certificate": the server hands out a random registration
//! code; the CA's owner issues, with the CA key, a certificate whose subject CN is that code.
//! Presenting it proves possession of the CA key. The CA itself must be a CA
//! (basicConstraints cA=TRUE, keyCertSign if keyUsage is present), currently valid, with a key
//! that passes [`super::inspect_public_key`]; a self-signed root must verify under its own key.

use super::cert::{CertInfo, ParsedCert, attribute_text};
use super::key::{KeyError, PublicKeyKind};
use super::signed_data::{SignedDataError, verify_certificate_signature};
use crate::Timestamp;
use const_oid::db::rfc4519::COMMON_NAME;
use serde::Serialize;
use subtle::ConstantTimeEq;

/// Bytes of randomness in a registration code.
pub const REGISTRATION_CODE_BYTES: usize = 20;

/// A server-issued registration code: 40 lower-case hex characters from 160 random bits.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistrationCode(String);

impl RegistrationCode {
    /// Makes a code from fresh randomness (the caller's CSPRNG; the verifier has none).
    pub fn from_random(random: [u8; REGISTRATION_CODE_BYTES]) -> Self {
        RegistrationCode(hex::encode(random))
    }

    /// A code previously issued (e.g. read back from the registry).
    pub fn from_issued(code: &str) -> Self {
        RegistrationCode(code.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RegistrationCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A pending code is a bearer secret until used: keep it out of logs.
        f.write_str("RegistrationCode(<redacted>)")
    }
}

/// What registration learned about an accepted CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CaRegistration {
    pub ca: CertInfo,
    pub key: PublicKeyKind,
    pub self_signed: bool,
    pub path_len: Option<u8>,
}

/// Why a CA was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "check", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RegistrationError {
    #[error("{what} is not a readable X.509 certificate: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("`{subject}` is not a CA certificate (basicConstraints cA=TRUE missing)")]
    NotACa { subject: String },
    #[error("`{subject}` has a keyUsage without keyCertSign: it cannot issue device certificates")]
    CannotSignCertificates { subject: String },
    #[error("CA `{subject}` expired at {not_after} (checked at {now})")]
    Expired {
        subject: String,
        not_after: Timestamp,
        now: Timestamp,
    },
    #[error("CA `{subject}` is not valid before {not_before} (checked at {now})")]
    NotYetValid {
        subject: String,
        not_before: Timestamp,
        now: Timestamp,
    },
    #[error("CA `{subject}` has an unacceptable key: {problem}")]
    WeakKey { subject: String, problem: KeyError },
    #[error("self-signed CA `{subject}` does not verify under its own key")]
    BadSelfSignature { subject: String },
    #[error("verification certificate `{subject}` was issued by `{issuer}`, not by the CA `{ca}`")]
    VerificationNotIssuedByCa {
        subject: String,
        issuer: String,
        ca: String,
    },
    #[error("verification certificate `{subject}` is not signed by the key of CA `{ca}`: no proof of possession")]
    VerificationBadSignature { subject: String, ca: String },
    #[error("verification certificate `{subject}` is outside its validity ({not_before} .. {not_after}) at {now}")]
    VerificationNotValidNow {
        subject: String,
        not_before: Timestamp,
        not_after: Timestamp,
        now: Timestamp,
    },
    #[error("verification certificate has no subject CN; it must carry the registration code")]
    VerificationNoCode,
    #[error("verification certificate CN does not match the registration code issued for this registration")]
    CodeMismatch,
}

impl RegistrationError {
    /// A stable name for the failed check.
    pub fn check(&self) -> &'static str {
        match self {
            RegistrationError::Malformed { .. } => "malformed",
            RegistrationError::NotACa { .. } => "not_a_ca",
            RegistrationError::CannotSignCertificates { .. } => "cannot_sign_certificates",
            RegistrationError::Expired { .. } => "expired",
            RegistrationError::NotYetValid { .. } => "not_yet_valid",
            RegistrationError::WeakKey { .. } => "weak_key",
            RegistrationError::BadSelfSignature { .. } => "bad_self_signature",
            RegistrationError::VerificationNotIssuedByCa { .. } => "verification_not_issued_by_ca",
            RegistrationError::VerificationBadSignature { .. } => "verification_bad_signature",
            RegistrationError::VerificationNotValidNow { .. } => "verification_not_valid_now",
            RegistrationError::VerificationNoCode => "verification_no_code",
            RegistrationError::CodeMismatch => "code_mismatch",
        }
    }
}

/// The checks on the CA certificate alone (what `--trust-ca` at start-up also applies).
pub fn check_ca_certificate(ca_der: &[u8], now: Timestamp) -> Result<CaRegistration, RegistrationError> {
    let ca = ParsedCert::from_der(ca_der).map_err(|e| RegistrationError::Malformed {
        what: "CA certificate",
        detail: e.0,
    })?;
    check_parsed_ca(&ca, now)
}

fn check_parsed_ca(ca: &ParsedCert, now: Timestamp) -> Result<CaRegistration, RegistrationError> {
    let subject = || ca.info.subject.clone();
    let key = ca.key.clone().map_err(|problem| RegistrationError::WeakKey {
        subject: subject(),
        problem,
    })?;
    let path_len = match ca.basic_constraints {
        Some((true, path_len)) => path_len,
        _ => return Err(RegistrationError::NotACa { subject: subject() }),
    };
    if !ca.can_sign_certificates {
        return Err(RegistrationError::CannotSignCertificates { subject: subject() });
    }
    if now > ca.info.not_after {
        return Err(RegistrationError::Expired {
            subject: subject(),
            not_after: ca.info.not_after,
            now,
        });
    }
    if now < ca.info.not_before {
        return Err(RegistrationError::NotYetValid {
            subject: subject(),
            not_before: ca.info.not_before,
            now,
        });
    }
    let self_signed = ca.is_self_issued();
    if self_signed && verify_certificate_signature(ca, ca.cert.tbs_certificate().subject_public_key_info()).is_err() {
        return Err(RegistrationError::BadSelfSignature { subject: subject() });
    }
    Ok(CaRegistration {
        ca: ca.info.clone(),
        key,
        self_signed,
        path_len,
    })
}

/// All registration checks: the CA itself, then proof of possession of its key through
/// `verification_der`, whose subject CN must equal `code`.
pub fn check_ca_registration(
    ca_der: &[u8],
    verification_der: &[u8],
    code: &RegistrationCode,
    now: Timestamp,
) -> Result<CaRegistration, RegistrationError> {
    let ca = ParsedCert::from_der(ca_der).map_err(|e| RegistrationError::Malformed {
        what: "CA certificate",
        detail: e.0,
    })?;
    let registration = check_parsed_ca(&ca, now)?;
    let proof = ParsedCert::from_der(verification_der).map_err(|e| RegistrationError::Malformed {
        what: "verification certificate",
        detail: e.0,
    })?;
    if proof.issuer() != ca.subject() {
        return Err(RegistrationError::VerificationNotIssuedByCa {
            subject: proof.info.subject.clone(),
            issuer: proof.info.issuer.clone(),
            ca: ca.info.subject.clone(),
        });
    }
    match verify_certificate_signature(&proof, ca.cert.tbs_certificate().subject_public_key_info()) {
        Ok(()) => {}
        Err(SignedDataError::BadSignature | SignedDataError::UnsupportedAlgorithm) => {
            return Err(RegistrationError::VerificationBadSignature {
                subject: proof.info.subject.clone(),
                ca: ca.info.subject.clone(),
            });
        }
    }
    if now < proof.info.not_before || now > proof.info.not_after {
        return Err(RegistrationError::VerificationNotValidNow {
            subject: proof.info.subject.clone(),
            not_before: proof.info.not_before,
            not_after: proof.info.not_after,
            now,
        });
    }
    let cn = attribute_text(proof.subject(), COMMON_NAME).ok_or(RegistrationError::VerificationNoCode)?;
    if !bool::from(cn.as_bytes().ct_eq(code.as_str().as_bytes())) {
        return Err(RegistrationError::CodeMismatch);
    }
    Ok(registration)
}
