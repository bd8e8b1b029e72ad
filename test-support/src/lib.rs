//! Test PKI for fleetward's tests, benchmarks and fuzz seeds.
//!
//! Every certificate here is made by rcgen at test time (nothing is checked in but the
//! RSA-1024 fixture, made by `fixtures/make-fixtures.sh`, because no in-tree library signs
//! with such a weak key). Signatures a secure element would produce are computed with
//! RustCrypto's `p256`/`p384`, an implementation independent of the aws-lc verifier under test.
//!
//! The shapes mirror the field:
//! - [`TestCa::stsafe_root`]: a root whose *only* extension is a critical
//!   basicConstraints CA:TRUE, like STMicroelectronics' STSAFE-A production CAs;
//! - [`TestCa::issue_stsafe_device`]: an X.509 v3 device certificate with **no extensions**,
//!   30 years of validity, `C=FR, O=STMicroelectronics, CN=<profile>-<die serial>` and the die
//!   serial as serial number.
#![allow(clippy::unwrap_used, missing_debug_implementations, unreachable_pub)]

pub mod attest;
pub mod bench;
pub mod fuzz;

use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::pkcs8::DecodePrivateKey;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension, DistinguishedName, DnType,
    IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
    SignatureAlgorithm,
};
use rustls_pki_types::UnixTime;
use sha2::Digest;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The instant most tests run "at": inside every validity window this crate issues by default.
pub const NOW: &str = "2026-11-23T12:00:00Z";

/// RFC 3339 → `UnixTime`, for tests.
pub fn at(rfc3339: &str) -> UnixTime {
    let t = OffsetDateTime::parse(rfc3339, &Rfc3339).expect("valid RFC 3339 time");
    UnixTime::since_unix_epoch(Duration::from_secs(t.unix_timestamp() as u64))
}

/// [`NOW`] as a `UnixTime`.
pub fn now() -> UnixTime {
    at(NOW)
}

fn dt(rfc3339: &str) -> OffsetDateTime {
    OffsetDateTime::parse(rfc3339, &Rfc3339).expect("valid RFC 3339 time")
}

/// Key algorithms the test PKI can mint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    P256,
    P384,
    Rsa2048,
    Rsa3072,
    Ed25519,
}

impl KeyKind {
    fn generate(self) -> KeyPair {
        match self {
            KeyKind::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            KeyKind::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
            KeyKind::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap(),
            KeyKind::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA384, rcgen::RsaKeySize::_3072).unwrap(),
            KeyKind::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        }
    }
}

/// What a test wants of a certificate's validity and extras.
#[derive(Clone, Debug)]
pub struct Spec {
    pub not_before: String,
    pub not_after: String,
    /// Adds a critical extension nobody understands (OID 1.3.6.1.4.1.55555.1).
    pub unknown_critical_extension: bool,
    pub serial: Option<Vec<u8>>,
    /// keyUsage of a CA (default: keyCertSign, cRLSign, digitalSignature).
    pub ca_key_usages: Option<Vec<KeyUsagePurpose>>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            not_before: "2024-01-01T00:00:00Z".into(),
            not_after: "2034-01-01T00:00:00Z".into(),
            unknown_critical_extension: false,
            serial: None,
            ca_key_usages: None,
        }
    }
}

/// A conventional CA: `O=fleetward test, CN=<cn>`, basicConstraints (with `path_len`), keyUsage.
fn ca_params(cn: &str, path_len: Option<u8>, spec: &Spec) -> CertificateParams {
    let mut params = base_params(
        &[(DnType::OrganizationName, "fleetward test"), (DnType::CommonName, cn)],
        spec,
    );
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = spec.ca_key_usages.clone().unwrap_or_else(|| {
        vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ]
    });
    params
}

fn base_params(dn: &[(DnType, &str)], spec: &Spec) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    for (ty, value) in dn {
        name.push(ty.clone(), *value);
    }
    params.distinguished_name = name;
    params.not_before = dt(&spec.not_before);
    params.not_after = dt(&spec.not_after);
    params.serial_number = spec.serial.as_deref().map(SerialNumber::from_slice);
    if spec.unknown_critical_extension {
        let mut ext = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![0x05, 0x00]);
        ext.set_criticality(true);
        params.custom_extensions.push(ext);
    }
    params
}

/// A certificate authority of the test PKI: its certificate and its signing key.
pub struct TestCa {
    pub der: Vec<u8>,
    pub key: KeyPair,
    params: CertificateParams,
}

/// A device (end-entity) certificate and its private key.
pub struct TestDevice {
    pub der: Vec<u8>,
    pub key: KeyPair,
    kind: KeyKind,
    params: CertificateParams,
}

/// DER of the basicConstraints value `SEQUENCE { BOOLEAN TRUE }`.
const BASIC_CONSTRAINTS_CA_TRUE: [u8; 5] = [0x30, 0x03, 0x01, 0x01, 0xff];

impl TestCa {
    /// An STSAFE-style root: P-256, v3, the only extension a critical basicConstraints CA:TRUE,
    /// 30 years of validity.
    pub fn stsafe_root(cn: &str) -> TestCa {
        let spec = Spec {
            not_before: "2019-06-01T00:00:00Z".into(),
            not_after: "2049-06-01T00:00:00Z".into(),
            serial: Some(vec![0x01]),
            ..Spec::default()
        };
        let mut params = base_params(
            &[
                (DnType::CountryName, "FR"),
                (DnType::OrganizationName, "STMicroelectronics"),
                (DnType::CommonName, cn),
            ],
            &spec,
        );
        // rcgen's IsCa::Ca would add a subjectKeyIdentifier; the STSAFE root has none.
        params.is_ca = IsCa::NoCa;
        let mut bc = CustomExtension::from_oid_content(&[2, 5, 29, 19], BASIC_CONSTRAINTS_CA_TRUE.to_vec());
        bc.set_criticality(true);
        params.custom_extensions.push(bc);
        let key = KeyKind::P256.generate();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        TestCa { der, key, params }
    }

    /// A conventional root CA (basicConstraints, SKI, keyUsage keyCertSign + cRLSign).
    pub fn root(kind: KeyKind, cn: &str) -> TestCa {
        Self::root_with(kind, cn, None, &Spec::default())
    }

    pub fn root_with(kind: KeyKind, cn: &str, path_len: Option<u8>, spec: &Spec) -> TestCa {
        let mut params = ca_params(cn, path_len, spec);
        params.key_identifier_method = KeyIdMethod::Sha256;
        let key = kind.generate();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        TestCa { der, key, params }
    }

    /// A subordinate CA issued by `self`.
    pub fn intermediate(&self, kind: KeyKind, cn: &str, path_len: Option<u8>) -> TestCa {
        self.intermediate_with(kind, cn, path_len, &Spec::default())
    }

    pub fn intermediate_with(&self, kind: KeyKind, cn: &str, path_len: Option<u8>, spec: &Spec) -> TestCa {
        let mut params = ca_params(cn, path_len, spec);
        params.use_authority_key_identifier_extension = true;
        let key = kind.generate();
        let der = params.signed_by(&key, &self.issuer()).unwrap().der().to_vec();
        TestCa { der, key, params }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// A device certificate in the STSAFE-A profile: v3, no extensions, 30 years,
    /// `C=FR, O=STMicroelectronics, CN=<profile>-<die serial hex>`, serial = die serial.
    pub fn issue_stsafe_device(&self, profile: &str, die_serial: &[u8]) -> TestDevice {
        let cn = format!("{profile}-{}", hex_upper(die_serial));
        let spec = Spec {
            not_before: "2020-02-09T00:00:00Z".into(),
            not_after: "2050-02-09T00:00:00Z".into(),
            serial: Some(die_serial.to_vec()),
            ..Spec::default()
        };
        self.issue_device_with(
            KeyKind::P256,
            &[
                (DnType::CountryName, "FR"),
                (DnType::OrganizationName, "STMicroelectronics"),
                (DnType::CommonName, &cn),
            ],
            &spec,
        )
    }

    /// A plain device certificate with subject `CN=<cn>`, no extensions.
    pub fn issue_device(&self, kind: KeyKind, cn: &str) -> TestDevice {
        self.issue_device_with(kind, &[(DnType::CommonName, cn)], &Spec::default())
    }

    pub fn issue_device_with(&self, kind: KeyKind, dn: &[(DnType, &str)], spec: &Spec) -> TestDevice {
        let params = base_params(dn, spec);
        let key = kind.generate();
        let der = params.signed_by(&key, &self.issuer()).unwrap().der().to_vec();
        TestDevice { der, key, kind, params }
    }

    /// The "verification certificate" a CA owner makes to prove possession of the CA key:
    /// subject CN = the registration code the server handed out, signed by the CA key.
    pub fn verification_certificate(&self, code: &str) -> Vec<u8> {
        let params = base_params(&[(DnType::CommonName, code)], &Spec::default());
        let key = KeyKind::P256.generate();
        params.signed_by(&key, &self.issuer()).unwrap().der().to_vec()
    }

    /// A v2 CRL signed by this CA listing `serials`.
    pub fn crl(&self, serials: &[&[u8]], this_update: &str, next_update: &str) -> Vec<u8> {
        let params = CertificateRevocationListParams {
            this_update: dt(this_update),
            next_update: dt(next_update),
            crl_number: SerialNumber::from_slice(&[0x01]),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: dt("2025-01-01T00:00:00Z"),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer()).unwrap().der().to_vec()
    }

    pub fn pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }

    /// This CA's certificate parameters, to issue by hand (e.g. a device used as a CA).
    pub fn params(&self) -> &CertificateParams {
        &self.params
    }
}

impl TestDevice {
    pub fn pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }

    /// Uses this device *as if it were a CA* to sign another device certificate — the
    /// "leaf used as CA" attack. The device certificate has no basicConstraints.
    pub fn issue_as_if_ca(&self, cn: &str) -> TestDevice {
        let issuer = Issuer::from_params(&self.params, &self.key);
        let child = base_params(&[(DnType::CommonName, cn)], &Spec::default());
        let key = KeyKind::P256.generate();
        let der = child.signed_by(&key, &issuer).unwrap().der().to_vec();
        TestDevice {
            der,
            key,
            kind: KeyKind::P256,
            params: child,
        }
    }

    /// What the secure element returns for `digest`: ECDSA over the given bytes *as the digest*
    /// (no hashing on the device), as raw `r‖s`.
    pub fn se_sign_digest_raw(&self, digest: &[u8]) -> Vec<u8> {
        let pkcs8 = self.key.serialize_der();
        match self.kind {
            KeyKind::P256 => {
                let sk = p256::ecdsa::SigningKey::from_pkcs8_der(&pkcs8).unwrap();
                let sig: p256::ecdsa::Signature = sk.sign_prehash(digest).unwrap();
                sig.to_bytes().to_vec()
            }
            KeyKind::P384 => {
                let sk = p384::ecdsa::SigningKey::from_pkcs8_der(&pkcs8).unwrap();
                let sig: p384::ecdsa::Signature = sk.sign_prehash(digest).unwrap();
                sig.to_bytes().to_vec()
            }
            other => panic!("{other:?} is not a secure-element key type"),
        }
    }

    /// The same signature, DER-encoded (`ECDSA-Sig-Value`).
    pub fn se_sign_digest_der(&self, digest: &[u8]) -> Vec<u8> {
        let raw = self.se_sign_digest_raw(digest);
        match self.kind {
            KeyKind::P256 => p256::ecdsa::Signature::from_slice(&raw)
                .unwrap()
                .to_der()
                .as_bytes()
                .to_vec(),
            KeyKind::P384 => p384::ecdsa::Signature::from_slice(&raw)
                .unwrap()
                .to_der()
                .as_bytes()
                .to_vec(),
            other => panic!("{other:?} is not a secure-element key type"),
        }
    }

    /// STSELib today: the 32-byte challenge is handed to the SE as the digest itself.
    pub fn answer_direct(&self, challenge: &[u8]) -> Vec<u8> {
        self.se_sign_digest_raw(challenge)
    }

    /// Older X-CUBE-SAFEA1: the host hashes the challenge (SHA-256) and the SE signs that digest.
    pub fn answer_sha256(&self, challenge: &[u8]) -> Vec<u8> {
        self.se_sign_digest_raw(&sha2::Sha256::digest(challenge))
    }

    /// P-384 parts with SHA-384 host hashing.
    pub fn answer_sha384(&self, challenge: &[u8]) -> Vec<u8> {
        self.se_sign_digest_raw(&sha2::Sha384::digest(challenge))
    }
}

/// The RSA-1024 self-signed CA made by `fixtures/make-fixtures.sh` (openssl): a key too weak
/// to register.
pub const RSA1024_CA_PEM: &str = include_str!("../fixtures/rsa1024-ca.pem");

/// A self-signed P-192 CA (openssl), a curve nobody should register.
pub const P192_CA_PEM: &str = include_str!("../fixtures/p192-ca.pem");

/// A CA certificate whose P-256 public key has been altered so the point is not on the curve.
/// (Its signature no longer verifies either; key checks must catch it first and say so.)
pub fn ca_with_off_curve_point(ca: &TestCa) -> Vec<u8> {
    let mut der = ca.der.clone();
    // The uncompressed point is 0x04 ‖ X ‖ Y; flip the last byte of Y.
    let point = ca.key.public_key_raw().to_vec();
    let at = find(&der, &point).expect("public key inside the certificate");
    let last = at + point.len() - 1;
    der[last] ^= 0x01;
    der
}

/// Index of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use std::fmt::Write;
    let b64 = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", std::str::from_utf8(chunk).unwrap());
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

pub fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The signature algorithm rcgen picks for a key kind (for tests that need it).
pub fn signature_algorithm(kind: KeyKind) -> &'static SignatureAlgorithm {
    match kind {
        KeyKind::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyKind::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyKind::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        KeyKind::Rsa3072 => &rcgen::PKCS_RSA_SHA384,
        KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
    }
}

pub use rcgen::DnType as Dn;
