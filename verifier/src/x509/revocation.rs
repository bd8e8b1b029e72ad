//! Revocation inputs: per-CA revoked-serial lists (what an operator types in) and CRLs
//! (what a CA publishes). rustls-webpki checks CRLs during path validation (signature,
//! issuer, nextUpdate); the serial lists are checked on the validated path.

use super::cert::{minimal, name_to_string};
use crate::Timestamp;
use der::Decode;
use serde::Serialize;
use std::collections::BTreeSet;
use webpki::{CertRevocationList, OwnedCertRevocationList};
use x509_cert::crl::CertificateList;
use x509_cert::name::Name;

/// Serial numbers an operator has revoked under one provisioning CA. A listed serial revokes
/// any certificate with that serial in a chain ending at that CA (device or intermediate).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevokedSerials(BTreeSet<Vec<u8>>);

impl RevokedSerials {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a serial given as big-endian bytes.
    pub fn insert(&mut self, serial: &[u8]) {
        self.0.insert(minimal(serial).to_vec());
    }

    /// Adds a serial given as hex (see [`normalize_serial_hex`] for the forms accepted).
    pub fn insert_hex(&mut self, serial: &str) -> Result<(), hex::FromHexError> {
        self.insert(&serial_bytes(serial)?);
        Ok(())
    }

    pub fn contains(&self, serial: &[u8]) -> bool {
        self.0.contains(minimal(serial))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn serial_bytes(serial: &str) -> Result<Vec<u8>, hex::FromHexError> {
    let cleaned: String = serial
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let cleaned = if cleaned.len() % 2 == 1 {
        format!("0{cleaned}")
    } else {
        cleaned
    };
    hex::decode(cleaned)
}

/// A serial number in the one form fleetward stores and shows (the form of
/// [`super::CertInfo::serial`]): lower-case hex of the big-endian bytes without leading zero bytes.
/// Accepts `0209B0846159E439520139`, `02:09:b0:…`, `0x…` and odd-length hex.
pub fn normalize_serial_hex(serial: &str) -> Result<String, hex::FromHexError> {
    Ok(hex::encode(minimal(&serial_bytes(serial)?)))
}

/// A summary of a CRL, for logs and the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CrlInfo {
    pub issuer: String,
    pub this_update: Timestamp,
    pub next_update: Timestamp,
    pub revoked: usize,
}

/// A parsed certificate revocation list. Its signature is checked against its issuer when a
/// chain through that issuer is validated (or up front with [`Crl::check_issued_by`]).
#[derive(Debug)]
pub struct Crl {
    pub(crate) webpki: CertRevocationList<'static>,
    pub(crate) issuer: Name,
    pub(crate) der: Vec<u8>,
    info: CrlInfo,
}

/// Why bytes are not a CRL we can use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CrlError {
    #[error("not a CRL: {detail}")]
    Malformed { detail: String },
    #[error("CRL from `{issuer}` is not usable: {detail}")]
    Unsupported { issuer: String, detail: String },
    #[error("CRL from `{issuer}` has no nextUpdate (RFC 5280 requires one; without it staleness cannot be judged)")]
    NoNextUpdate { issuer: String },
    #[error("CRL from `{issuer}` is not signed by `{ca}`")]
    NotIssuedBy { issuer: String, ca: String },
}

impl Crl {
    pub fn from_der(der: &[u8]) -> Result<Self, CrlError> {
        let parsed = CertificateList::<x509_cert::certificate::Rfc5280>::from_der(der)
            .map_err(|e| CrlError::Malformed { detail: e.to_string() })?;
        let tbs = &parsed.tbs_cert_list;
        let issuer_str = name_to_string(&tbs.issuer);
        let next_update = tbs.next_update.ok_or_else(|| CrlError::NoNextUpdate {
            issuer: issuer_str.clone(),
        })?;
        let owned = OwnedCertRevocationList::from_der(der).map_err(|e| CrlError::Unsupported {
            issuer: issuer_str.clone(),
            detail: format!("{e:?}"),
        })?;
        let info = CrlInfo {
            issuer: issuer_str,
            this_update: Timestamp::from_unix(tbs.this_update.to_unix_duration().as_secs() as i64),
            next_update: Timestamp::from_unix(next_update.to_unix_duration().as_secs() as i64),
            revoked: tbs.revoked_certificates.as_ref().map_or(0, Vec::len),
        };
        Ok(Crl {
            webpki: CertRevocationList::Owned(owned),
            issuer: tbs.issuer.clone(),
            der: der.to_vec(),
            info,
        })
    }

    pub fn info(&self) -> &CrlInfo {
        &self.info
    }

    /// The serial numbers this CRL lists, lower-case minimal hex (as device records keep them).
    pub fn revoked_serials_hex(&self) -> Vec<String> {
        let Ok(parsed) = CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&self.der) else {
            return Vec::new(); // parsed in from_der; cannot fail
        };
        parsed
            .tbs_cert_list
            .revoked_certificates
            .iter()
            .flatten()
            .map(|r| hex::encode(minimal(r.serial_number.as_bytes())))
            .collect()
    }

    /// Whether this CRL lists `serial` (big-endian bytes).
    pub(crate) fn lists(&self, serial: &[u8]) -> bool {
        matches!(self.webpki.find_serial(serial), Ok(Some(_)))
    }

    /// Checks, before accepting a CRL for a registered CA, that the CA really signed it.
    pub fn check_issued_by(&self, ca_der: &[u8]) -> Result<(), CrlError> {
        let ca = super::cert::ParsedCert::from_der(ca_der).map_err(|e| CrlError::Malformed {
            detail: format!("CA: {e}"),
        })?;
        let not_issued = || CrlError::NotIssuedBy {
            issuer: self.info.issuer.clone(),
            ca: ca.info.subject.clone(),
        };
        if ca.subject() != &self.issuer {
            return Err(not_issued());
        }
        let parsed = CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&self.der)
            .map_err(|e| CrlError::Malformed { detail: e.to_string() })?;
        let tbs = super::signed_data::signed_part(&self.der).ok_or_else(not_issued)?;
        let signature = parsed.signature.as_bytes().ok_or_else(not_issued)?;
        super::signed_data::verify_signed_data(
            ca.cert.tbs_certificate().subject_public_key_info(),
            &parsed.signature_algorithm,
            tbs,
            signature,
        )
        .map_err(|_| not_issued())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_normal_form() {
        for input in [
            "0209B0846159E439520139",
            "02:09:b0:84:61:59:e4:39:52:01:39",
            "0x209B0846159E439520139",
        ] {
            assert_eq!(
                normalize_serial_hex(input).unwrap(),
                "0209b0846159e439520139",
                "{input}"
            );
        }
        assert_eq!(normalize_serial_hex("00:00:42").unwrap(), "42");
        assert_eq!(normalize_serial_hex("0").unwrap(), "00");
        assert!(normalize_serial_hex("zz").is_err());
        let mut set = RevokedSerials::new();
        set.insert_hex("0x209aa").unwrap();
        assert!(set.contains(&[0x00, 0x02, 0x09, 0xaa]));
    }
}
