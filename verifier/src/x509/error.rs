//! Why a device certificate chain was rejected: one variant per check, each naming the
//! certificate it failed on. These travel to logs, events, metrics (via [`ChainError::check`])
//! and the API (serialized with a `check` tag), so their names and fields are a contract.

use crate::Timestamp;
use serde::Serialize;

/// Where a revocation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationSource {
    /// The operator's revoked-serial list for the provisioning CA.
    SerialList,
    /// A CRL signed by the certificate's issuer.
    Crl,
}

/// A rejected device chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "check", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChainError {
    #[error("{what} is not a readable X.509 certificate: {detail}")]
    Malformed { what: String, detail: String },
    #[error("certificate `{subject}` expired at {not_after} (checked at {now})")]
    Expired {
        subject: String,
        not_after: Timestamp,
        now: Timestamp,
    },
    #[error("certificate `{subject}` is not valid before {not_before} (checked at {now})")]
    NotYetValid {
        subject: String,
        not_before: Timestamp,
        now: Timestamp,
    },
    #[error(
        "certificate `{subject}` was issued by `{issuer}`, which is not a registered provisioning CA nor a known intermediate"
    )]
    UnknownIssuer { subject: String, issuer: String },
    #[error("certificate `{subject}` chains to provisioning CA `{ca}`, which is revoked")]
    CaRevoked { subject: String, ca: String },
    #[error("signature of certificate `{subject}` does not verify with the key of `{issuer}`")]
    BadSignature { subject: String, issuer: String },
    #[error("certificate `{subject}` is a CA certificate (basicConstraints cA=TRUE) presented as a device certificate")]
    CaUsedAsLeaf { subject: String },
    #[error(
        "certificate `{subject}` is not a CA (no basicConstraints cA=TRUE) but issued another certificate in the chain"
    )]
    LeafUsedAsCa { subject: String },
    #[error("CA `{subject}` issued a certificate in the chain but its keyUsage lacks keyCertSign")]
    IssuerCannotSignCertificates { subject: String },
    #[error("CA `{subject}` allows {path_len} intermediate(s) below it (pathLenConstraint) but the chain has more")]
    PathLenExceeded { subject: String, path_len: u8 },
    #[error("certificate `{subject}` carries an unsupported critical extension {oid}")]
    UnsupportedCriticalExtension { subject: String, oid: String },
    #[error("certificate `{subject}` is not an X.509 v3 certificate")]
    UnsupportedVersion { subject: String },
    #[error("certificate `{subject}` uses a signature algorithm or key that is not accepted: {detail}")]
    UnsupportedAlgorithm { subject: String, detail: String },
    #[error("certificate `{subject}` has an extendedKeyUsage without clientAuth")]
    NotForClientAuth { subject: String },
    #[error("certificate `{subject}` violates the name constraints of its issuer")]
    NameConstraintViolation { subject: String },
    #[error("certificate `{subject}` (serial {serial}) is revoked ({via})")]
    Revoked {
        subject: String,
        serial: String,
        via: RevocationSource,
    },
    #[error("CRL of `{issuer}` is out of date: nextUpdate {next_update} (checked at {now})")]
    CrlExpired {
        issuer: String,
        next_update: Timestamp,
        now: Timestamp,
    },
    #[error("CRL of `{issuer}` is not validly signed by that issuer")]
    CrlBadSignature { issuer: String },
    #[error("CRL of `{issuer}` cannot be used: {detail}")]
    CrlUnusable { issuer: String, detail: String },
    #[error("the chain presented is too long or too complex to validate ({detail})")]
    PathTooComplex { detail: String },
    #[error("certificate `{subject}` does not yield a valid device identity: {reason}")]
    IdentityInvalid { subject: String, reason: String },
    #[error("certificate `{subject}` was rejected: {detail}")]
    Other { subject: String, detail: String },
}

impl ChainError {
    /// A stable, low-cardinality name for the failed check (metric label, event kind).
    pub fn check(&self) -> &'static str {
        match self {
            ChainError::Malformed { .. } => "malformed",
            ChainError::Expired { .. } => "expired",
            ChainError::NotYetValid { .. } => "not_yet_valid",
            ChainError::UnknownIssuer { .. } => "unknown_issuer",
            ChainError::CaRevoked { .. } => "ca_revoked",
            ChainError::BadSignature { .. } => "bad_signature",
            ChainError::CaUsedAsLeaf { .. } => "ca_used_as_leaf",
            ChainError::LeafUsedAsCa { .. } => "leaf_used_as_ca",
            ChainError::IssuerCannotSignCertificates { .. } => "issuer_cannot_sign_certificates",
            ChainError::PathLenExceeded { .. } => "path_len_exceeded",
            ChainError::UnsupportedCriticalExtension { .. } => "unsupported_critical_extension",
            ChainError::UnsupportedVersion { .. } => "unsupported_version",
            ChainError::UnsupportedAlgorithm { .. } => "unsupported_algorithm",
            ChainError::NotForClientAuth { .. } => "not_for_client_auth",
            ChainError::NameConstraintViolation { .. } => "name_constraint_violation",
            ChainError::Revoked { .. } => "revoked",
            ChainError::CrlExpired { .. } => "crl_expired",
            ChainError::CrlBadSignature { .. } => "crl_bad_signature",
            ChainError::CrlUnusable { .. } => "crl_unusable",
            ChainError::PathTooComplex { .. } => "path_too_complex",
            ChainError::IdentityInvalid { .. } => "identity_invalid",
            ChainError::Other { .. } => "other",
        }
    }
}

impl std::fmt::Display for RevocationSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RevocationSource::SerialList => "on the CA's revoked-serial list",
            RevocationSource::Crl => "listed in its issuer's CRL",
        })
    }
}
