//! One signature over one certificate or CRL, checked with rustls-webpki's own algorithm table.
//!
//! Path validation never comes through here (rustls-webpki does it whole). This serves the two
//! places where we need a single link checked: proof of possession at CA registration, and
//! naming *which* link of a rejected chain carries the bad signature.

use der::Decode;
use der::Encode;
use der::asn1::AnyRef;
use rustls_pki_types::SignatureVerificationAlgorithm;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

/// Why a single signature did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SignedDataError {
    /// No algorithm accepts this (signature algorithm, key algorithm) pair.
    UnsupportedAlgorithm,
    /// The signature does not verify under the key.
    BadSignature,
}

fn content_of(alg: &AlgorithmIdentifierOwned) -> Option<Vec<u8>> {
    let der = alg.to_der().ok()?;
    let any = AnyRef::from_der(&der).ok()?;
    Some(any.value().to_vec())
}

/// Verifies `signature` over `message` with `issuer_spki`, using the algorithm named by
/// `signature_algorithm` — the same algorithm set rustls-webpki uses for chains.
pub(crate) fn verify_signed_data(
    issuer_spki: &SubjectPublicKeyInfoOwned,
    signature_algorithm: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignedDataError> {
    let sig_alg = content_of(signature_algorithm).ok_or(SignedDataError::UnsupportedAlgorithm)?;
    let key_alg = content_of(&issuer_spki.algorithm).ok_or(SignedDataError::UnsupportedAlgorithm)?;
    let public_key = issuer_spki.subject_public_key.raw_bytes();
    let mut supported = false;
    for alg in webpki::ALL_VERIFICATION_ALGS {
        let alg: &dyn SignatureVerificationAlgorithm = *alg;
        if alg.signature_alg_id().as_ref() != sig_alg.as_slice()
            || alg.public_key_alg_id().as_ref() != key_alg.as_slice()
        {
            continue;
        }
        supported = true;
        if alg.verify_signature(public_key, message, signature).is_ok() {
            return Ok(());
        }
    }
    Err(if supported {
        SignedDataError::BadSignature
    } else {
        SignedDataError::UnsupportedAlgorithm
    })
}

/// The first element (the to-be-signed part) of a signed structure, exactly as received.
pub(crate) fn signed_part(signed_der: &[u8]) -> Option<&[u8]> {
    use der::Reader;
    let outer = AnyRef::from_der(signed_der).ok()?;
    let mut reader = der::SliceReader::new(outer.value()).ok()?;
    reader.tlv_bytes().ok()
}

/// Verifies that `child` (parsed, with its original DER) was signed by the holder of `issuer_spki`.
pub(crate) fn verify_certificate_signature(
    child: &super::cert::ParsedCert,
    issuer_spki: &SubjectPublicKeyInfoOwned,
) -> Result<(), SignedDataError> {
    let tbs = signed_part(&child.der).ok_or(SignedDataError::BadSignature)?;
    let signature = child.cert.signature().as_bytes().ok_or(SignedDataError::BadSignature)?;
    verify_signed_data(issuer_spki, child.cert.signature_algorithm(), tbs, signature)
}
