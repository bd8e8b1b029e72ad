//! X.509: provisioning CAs, device chains, identity, revocation, CA registration.

mod cert;
mod diagnose;
mod encoding;
mod error;
mod identity;
mod key;
mod registration;
mod revocation;
mod signed_data;
mod store;

pub use cert::CertInfo;
pub use encoding::{InputError, certificates_from_pem_or_der, crls_from_pem_or_der};
pub use error::{ChainError, RevocationSource};
pub use identity::{DeviceId, IdentityError, IdentityPolicy, IdentitySource, MAX_DEVICE_ID_LEN, PolicyError};
pub use key::{KeyError, MAX_RSA_BITS, MIN_RSA_BITS, PublicKeyKind, inspect_public_key};
pub use registration::{
    CaRegistration, REGISTRATION_CODE_BYTES, RegistrationCode, RegistrationError, check_ca_certificate,
    check_ca_registration,
};
pub use revocation::{Crl, CrlError, CrlInfo, RevokedSerials, normalize_serial_hex};
pub use store::{MAX_PRESENTED_INTERMEDIATES, ProvisioningCa, TrustStore, VerifiedDevice};

/// Summarises a certificate (DER) for display, without trusting it.
pub fn describe_certificate(der: &[u8]) -> Result<CertInfo, ChainError> {
    cert::ParsedCert::from_der(der)
        .map(|c| c.info)
        .map_err(|e| ChainError::Malformed {
            what: "certificate".into(),
            detail: e.0,
        })
}
