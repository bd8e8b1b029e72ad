//! A certificate parsed once: the DER (for rustls-webpki) and its fields (via x509-cert).

use super::key::{KeyError, PublicKeyKind, inspect_public_key};
use crate::Timestamp;
use der::{Decode, Encode};
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
use x509_cert::name::Name;

/// What an operator needs to know about one certificate; part of every verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Subject DN in RFC 4514 form (`CN=eval3-0209…,O=STMicroelectronics,C=FR`).
    pub subject: String,
    /// Issuer DN in RFC 4514 form.
    pub issuer: String,
    /// Serial number, lower-case hex, minimal (no leading zero bytes).
    pub serial: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// SHA-256 of the whole certificate DER, lower-case hex.
    pub sha256: String,
    /// SHA-256 of the SubjectPublicKeyInfo DER, lower-case hex.
    pub spki_sha256: String,
    /// The public key, e.g. `ECDSA P-256` or `RSA 3072`.
    pub key: String,
    /// basicConstraints cA.
    pub is_ca: bool,
}

/// A certificate decoded once. Everything fleetward reads from a certificate comes from here;
/// the trust decision itself is made by rustls-webpki over [`ParsedCert::der`].
#[derive(Clone, Debug)]
pub(crate) struct ParsedCert {
    pub(crate) der: CertificateDer<'static>,
    pub(crate) cert: Certificate,
    pub(crate) info: CertInfo,
    /// basicConstraints, if present: (cA, pathLenConstraint).
    pub(crate) basic_constraints: Option<(bool, Option<u8>)>,
    /// The public key kind, or why it is not one we understand.
    pub(crate) key: Result<PublicKeyKind, KeyError>,
    /// keyUsage is absent or includes keyCertSign (RFC 5280 §4.2.1.3).
    pub(crate) can_sign_certificates: bool,
}

/// Why bytes are not a certificate we can read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NotACertificate(pub(crate) String);

impl ParsedCert {
    pub(crate) fn from_der(der: &[u8]) -> Result<Self, NotACertificate> {
        let cert = Certificate::from_der(der).map_err(|e| NotACertificate(format!("not X.509 DER: {e}")))?;
        let tbs = cert.tbs_certificate();
        let basic_constraints = match tbs.get_extension::<BasicConstraints>() {
            Ok(bc) => bc.map(|(_, bc)| (bc.ca, bc.path_len_constraint)),
            Err(e) => return Err(NotACertificate(format!("basicConstraints: {e}"))),
        };
        let can_sign_certificates = match tbs.get_extension::<KeyUsage>() {
            Ok(ku) => ku.is_none_or(|(_, ku)| ku.key_cert_sign()),
            Err(e) => return Err(NotACertificate(format!("keyUsage: {e}"))),
        };
        let spki_der = tbs
            .subject_public_key_info()
            .to_der()
            .map_err(|e| NotACertificate(format!("subjectPublicKeyInfo: {e}")))?;
        let key = inspect_public_key(tbs.subject_public_key_info());
        let validity = tbs.validity();
        let info = CertInfo {
            subject: name_to_string(tbs.subject()),
            issuer: name_to_string(tbs.issuer()),
            serial: hex::encode(minimal(tbs.serial_number().as_bytes())),
            not_before: Timestamp::from_unix(validity.not_before.to_unix_duration().as_secs() as i64),
            not_after: Timestamp::from_unix(validity.not_after.to_unix_duration().as_secs() as i64),
            sha256: hex::encode(Sha256::digest(der)),
            spki_sha256: hex::encode(Sha256::digest(&spki_der)),
            key: match &key {
                Ok(k) => k.to_string(),
                Err(_) => "unsupported".into(),
            },
            is_ca: matches!(basic_constraints, Some((true, _))),
        };
        Ok(ParsedCert {
            der: CertificateDer::from(der.to_vec()),
            cert,
            info,
            basic_constraints,
            key,
            can_sign_certificates,
        })
    }

    pub(crate) fn subject(&self) -> &Name {
        self.cert.tbs_certificate().subject()
    }

    pub(crate) fn issuer(&self) -> &Name {
        self.cert.tbs_certificate().issuer()
    }

    /// Serial number bytes without leading zeros (how we compare serials).
    pub(crate) fn serial(&self) -> &[u8] {
        minimal(self.cert.tbs_certificate().serial_number().as_bytes())
    }

    pub(crate) fn is_self_issued(&self) -> bool {
        self.subject() == self.issuer()
    }

    /// Critical extensions rustls-webpki does not process (it rejects certificates carrying any).
    /// The list mirrors rustls-webpki 0.103's `remember_cert_extension`.
    pub(crate) fn unknown_critical_extension(&self) -> Option<String> {
        const UNDERSTOOD: &[&str] = &[
            "2.5.29.15",               // keyUsage
            "2.5.29.17",               // subjectAltName
            "2.5.29.19",               // basicConstraints
            "2.5.29.30",               // nameConstraints
            "2.5.29.31",               // cRLDistributionPoints
            "2.5.29.37",               // extKeyUsage
            "1.3.6.1.4.1.11129.2.4.2", // embedded SCT list
        ];
        self.cert
            .tbs_certificate()
            .extensions()?
            .iter()
            .filter(|e| e.critical)
            .map(|e| e.extn_id.to_string())
            .find(|oid| !UNDERSTOOD.contains(&oid.as_str()))
    }
}

/// RFC 4514 string of a DN.
pub(crate) fn name_to_string(name: &Name) -> String {
    let s = name.to_string();
    if s.is_empty() { "(empty DN)".into() } else { s }
}

/// A big-endian integer without leading zero bytes (keeps one byte for zero).
pub(crate) fn minimal(bytes: &[u8]) -> &[u8] {
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    &bytes[first..]
}

/// Reads an attribute of a DN (e.g. CN, serialNumber) as text, whatever string type encodes it.
pub(crate) fn attribute_text(name: &Name, oid: const_oid::ObjectIdentifier) -> Option<String> {
    use der::asn1::{Any, BmpString};
    use der::{Tag, Tagged};
    let atv = name.iter().find(|atv| atv.oid == oid)?;
    let any: &Any = &atv.value;
    let bytes = any.value();
    match any.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::VisibleString | Tag::TeletexString => {
            String::from_utf8(bytes.to_vec()).ok()
        }
        Tag::BmpString => BmpString::from_ucs2(bytes).ok().map(|s| s.to_string()),
        _ => None,
    }
}
