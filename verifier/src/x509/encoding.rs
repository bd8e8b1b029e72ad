//! Certificates and CRLs arrive as PEM or DER; operators should not have to care which.

use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

/// Why an input file held no usable certificate or CRL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    #[error("input is PEM but holds no {expected} block")]
    NoPemBlock { expected: &'static str },
    #[error("malformed PEM: {detail}")]
    BadPem { detail: String },
    #[error("input is empty")]
    Empty,
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// The DER blocks of `kind` in a PEM file, or the whole input as one DER object.
fn pem_blocks_or_der(bytes: &[u8], kind: SectionKind, label: &'static str) -> Result<Vec<Vec<u8>>, InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty);
    }
    if !looks_like_pem(bytes) {
        return Ok(vec![bytes.to_vec()]);
    }
    let mut out = Vec::new();
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(bytes) {
        let (found, der) = item.map_err(|e| InputError::BadPem { detail: e.to_string() })?;
        if found == kind {
            out.push(der);
        }
    }
    if out.is_empty() {
        return Err(InputError::NoPemBlock { expected: label });
    }
    Ok(out)
}

/// Every certificate in `bytes`: all `CERTIFICATE` blocks of a PEM file (a chain or a bundle),
/// or one DER certificate. Whether the DER is a well-formed certificate is checked later, with
/// a precise error.
pub fn certificates_from_pem_or_der(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, InputError> {
    let blocks = pem_blocks_or_der(bytes, SectionKind::Certificate, "CERTIFICATE")?;
    Ok(blocks.into_iter().map(CertificateDer::from).collect())
}

/// Every CRL in `bytes`: all `X509 CRL` blocks of a PEM file, or one DER CRL.
pub fn crls_from_pem_or_der(bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, InputError> {
    let blocks = pem_blocks_or_der(bytes, SectionKind::Crl, "X509 CRL")?;
    Ok(blocks.into_iter().map(CertificateRevocationListDer::from).collect())
}
