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
    let s = common_name_to_string(name).unwrap_or_else(|| name.to_string());
    if s.is_empty() { "(empty DN)".into() } else { s }
}

/// Attribute types whose RFC 4514 key is looked up once (x509-cert's `Display` searches
/// const-oid's whole database per attribute: 3 % of the server's CPU per handshake, measured).
const COMMON_ATTRIBUTES: &[const_oid::ObjectIdentifier] = {
    use const_oid::db::rfc4519;
    &[
        rfc4519::COMMON_NAME,
        rfc4519::COUNTRY_NAME,
        rfc4519::ORGANIZATION_NAME,
        rfc4519::ORGANIZATIONAL_UNIT_NAME,
        rfc4519::LOCALITY_NAME,
        rfc4519::ST,
        rfc4519::SERIAL_NUMBER,
        rfc4519::STREET,
        rfc4519::DOMAIN_COMPONENT,
        rfc4519::UID,
        rfc4519::TITLE,
        rfc4519::DN_QUALIFIER,
    ]
};

/// The same string as x509-cert's `Display` for `Name`, for names made only of common attribute
/// types with string values; `None` for anything else (the caller falls back to `Display`).
fn common_name_to_string(name: &Name) -> Option<String> {
    use der::asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
    use der::{Tag, Tagged};
    use std::fmt::Write as _;
    static KEYS: std::sync::OnceLock<Vec<(const_oid::ObjectIdentifier, String)>> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        COMMON_ATTRIBUTES
            .iter()
            .filter_map(|oid| {
                // x509-cert's rule: the first of the shortest names the database has.
                let mut best: Option<&str> = None;
                for n in const_oid::db::DB.find_names_for_oid(*oid) {
                    if best.is_none_or(|b| n.len() < b.len()) {
                        best = Some(n);
                    }
                }
                best.map(|b| (*oid, b.to_ascii_uppercase()))
            })
            .collect()
    });
    let mut out = String::new();
    // RFC 4514 §2.1: the last RDN first.
    let rdns: &Vec<x509_cert::name::RelativeDistinguishedName> = name.as_ref().as_ref();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let key = &keys.iter().find(|(oid, _)| *oid == atv.oid)?.1;
            let value = match atv.value.tag() {
                Tag::PrintableString => PrintableStringRef::try_from(&atv.value).ok().map(|s| s.as_str()),
                Tag::Utf8String => Utf8StringRef::try_from(&atv.value).ok().map(|s| s.as_str()),
                Tag::Ia5String => Ia5StringRef::try_from(&atv.value).ok().map(|s| s.as_str()),
                Tag::TeletexString => TeletexStringRef::try_from(&atv.value).ok().map(|s| s.as_str()),
                _ => None,
            }?;
            out.push_str(key);
            out.push('=');
            let mut chars = value.char_indices().peekable();
            while let Some((k, c)) = chars.next() {
                match c {
                    '#' if k == 0 => out.push_str("\\#"),
                    ' ' if k == 0 || chars.peek().is_none() => out.push_str("\\ "),
                    '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                        out.push('\\');
                        out.push(c);
                    }
                    '\x00'..='\x1f' | '\x7f' => {
                        let _ = write!(out, "\\{:02x}", c as u8);
                    }
                    _ => out.push(c),
                }
            }
        }
    }
    Some(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn one_attribute(atv: x509_cert::attr::AttributeTypeAndValue) -> Name {
        let rdn = x509_cert::name::RelativeDistinguishedName::from(der::asn1::SetOfVec::try_from(vec![atv]).unwrap());
        let der = x509_cert::name::RdnSequence::from(vec![rdn]).to_der().unwrap();
        Name::from_der(&der).unwrap()
    }

    /// The fast path writes exactly what x509-cert's `Display` writes, or stands aside.
    #[test]
    fn names_print_as_x509_cert_prints_them() {
        let names = [
            "CN=eval3-0209A1B2C3,O=STMicroelectronics,C=FR",
            "CN=STM STSAFE-A PROD CA 01,O=STMicroelectronics,C=NL",
            "CN=a\\,b\\+c\\;d\\<e\\>f\\\"g\\\\h,OU=Fleet,L=Grenoble,ST=Isere",
            "CN=\\#leading hash,SERIALNUMBER=0042",
            "CN=\\ leading and trailing space\\ ,DC=example,DC=com",
            "CN=multi+SERIALNUMBER=7,O=Org",
            "UID=dev-1,TITLE=sensor,DNQUALIFIER=q,STREET=1 rue",
            "CN=caf\u{e9} \u{1f600},O=\u{c9}tablissement",
            "CN=inner#hash and = sign",
            "CN=x,1.2.3.4=#0c0576616c7565",
            "CN=x,EMAILADDRESS=dev@example.com",
            "",
        ];
        let mut fast = 0;
        for text in names {
            let name = if text.is_empty() {
                Name::from_der(&[0x30, 0x00]).unwrap()
            } else {
                Name::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
            };
            if common_name_to_string(&name).is_some() {
                fast += 1;
            }
            let expected = name.to_string();
            let ours = name_to_string(&name);
            if expected.is_empty() {
                assert_eq!(ours, "(empty DN)");
            } else {
                assert_eq!(ours, expected, "{text}");
            }
        }
        assert!(fast >= 9, "the fast path served only {fast} names");
        // Control characters and other string types, built directly.
        for value in ["tab\there", "nul\u{0}x", "del\u{7f}"] {
            let atv = x509_cert::attr::AttributeTypeAndValue {
                oid: const_oid::db::rfc4519::COMMON_NAME,
                value: der::Any::from(der::asn1::Utf8StringRef::new(value).unwrap()),
            };
            let name = one_attribute(atv);
            assert_eq!(common_name_to_string(&name).unwrap(), name.to_string());
        }
        for (tag_value, expected_fast) in [
            (
                der::Any::from(der::asn1::PrintableStringRef::new("Printable").unwrap()),
                true,
            ),
            (der::Any::from(der::asn1::Ia5StringRef::new("ia5@x").unwrap()), true),
            (
                der::Any::encode_from(&der::asn1::OctetString::new(vec![1, 2]).unwrap()).unwrap(),
                false,
            ),
        ] {
            let atv = x509_cert::attr::AttributeTypeAndValue {
                oid: const_oid::db::rfc4519::COMMON_NAME,
                value: tag_value,
            };
            let name = one_attribute(atv);
            assert_eq!(common_name_to_string(&name).is_some(), expected_fast);
            assert_eq!(name_to_string(&name), name.to_string());
        }
    }
}
