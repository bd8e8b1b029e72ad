//! A provisioning PKI as a chip maker's personalization line makes it: an STSAFE-style root
//! (P-256; v3, only a critical basicConstraints) and device certificates in the STSAFE-A
//! profile (v3, no extensions, serial = die serial, `CN=<profile>-<serial hex>`). The private
//! keys stand in for the secure element's.

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, Issuer, KeyPair, SerialNumber};
use time::OffsetDateTime;

/// DER of basicConstraints `SEQUENCE { BOOLEAN TRUE }`.
const BASIC_CONSTRAINTS_CA_TRUE: [u8; 5] = [0x30, 0x03, 0x01, 0x01, 0xff];

/// Errors making certificates.
#[derive(Debug, thiserror::Error)]
#[error("certificate generation failed: {0}")]
pub struct PkiError(#[from] rcgen::Error);

/// A provisioning CA and its key.
pub struct ProvisioningCa {
    pub der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    /// For an intermediate: itself and the intermediates above it, nearest first (what its
    /// devices send after their own certificate). Empty for a root.
    chain_der: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ProvisioningCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisioningCa").finish_non_exhaustive()
    }
}

/// A device's certificate and (simulated) secure-element key.
#[derive(Clone)]
pub struct DeviceIdentity {
    /// The device id fleetward derives (the certificate's CN).
    pub id: String,
    pub cert_der: Vec<u8>,
    /// The intermediate CAs between the device and the root (sent in the handshake), nearest
    /// first; empty when the root issued the device.
    pub chain_der: Vec<Vec<u8>>,
    /// PKCS#8 DER of the private key.
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn dn(pairs: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (t, v) in pairs {
        dn.push(t.clone(), *v);
    }
    dn
}

impl ProvisioningCa {
    /// A new root named `cn`, valid from a year ago for 30 years.
    pub fn generate(cn: &str, now: OffsetDateTime) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&[(DnType::OrganizationName, "fleetward demo"), (DnType::CommonName, cn)]);
        params.not_before = now - time::Duration::days(365);
        params.not_after = now + time::Duration::days(365 * 30);
        params.serial_number = Some(SerialNumber::from_slice(&[0x01]));
        // Like ST's root: no key identifiers, only a critical basicConstraints CA:TRUE.
        params.is_ca = IsCa::NoCa;
        let mut bc = CustomExtension::from_oid_content(&[2, 5, 29, 19], BASIC_CONSTRAINTS_CA_TRUE.to_vec());
        bc.set_criticality(true);
        params.custom_extensions.push(bc);
        let der = params.self_signed(&key)?.der().to_vec();
        Ok(ProvisioningCa {
            der,
            issuer: Issuer::new(params, key),
            chain_der: Vec::new(),
        })
    }

    pub fn pem(&self) -> String {
        pem("CERTIFICATE", &self.der)
    }

    /// A CA from its certificate and PKCS#8 key, both PEM (a `sim-devices pki init` directory's
    /// `ca.pem`/`ca.key`, or an intermediate's with `chain_der` = itself and what is above it).
    pub fn from_pem(cert_pem: &str, key_pem: &str, chain_der: Vec<Vec<u8>>) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let der = verifier::x509::certificates_from_pem_or_der(cert_pem.as_bytes())
            .ok()
            .and_then(|c| c.into_iter().next())
            .map(|c| c.to_vec())
            .ok_or(PkiError(rcgen::Error::CouldNotParseCertificate))?;
        Ok(ProvisioningCa { der, issuer, chain_der })
    }

    /// An intermediate CA under this one (P-256, a critical basicConstraints CA:TRUE), as a
    /// personalization line's issuing CA under the maker's root.
    pub fn intermediate(&self, cn: &str, now: OffsetDateTime) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&[(DnType::OrganizationName, "fleetward demo"), (DnType::CommonName, cn)]);
        params.not_before = now - time::Duration::days(365);
        params.not_after = now + time::Duration::days(365 * 25);
        params.serial_number = Some(SerialNumber::from_slice(&[0x02]));
        params.is_ca = IsCa::NoCa;
        let mut bc = CustomExtension::from_oid_content(&[2, 5, 29, 19], BASIC_CONSTRAINTS_CA_TRUE.to_vec());
        bc.set_criticality(true);
        params.custom_extensions.push(bc);
        let der = params.signed_by(&key, &self.issuer)?.der().to_vec();
        let mut chain = vec![der.clone()];
        chain.extend(self.chain_der.iter().cloned());
        Ok(ProvisioningCa {
            der,
            issuer: Issuer::new(params, key),
            chain_der: chain,
        })
    }

    /// The CA's private key (PKCS#8 PEM): what proves possession when the CA is registered
    /// (`fleetward ca register --key`).
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", &self.issuer.key().serialize_der())
    }

    /// A device certificate in the STSAFE-A profile, valid `not_before..not_after`.
    pub fn issue(
        &self,
        profile: &str,
        die_serial: &[u8],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<DeviceIdentity, PkiError> {
        let id = format!("{profile}-{}", hex_upper(die_serial));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&[
            (DnType::CountryName, "FR"),
            (DnType::OrganizationName, "STMicroelectronics"),
            (DnType::CommonName, &id),
        ]);
        params.not_before = not_before;
        params.not_after = not_after;
        let mut serial = die_serial.to_vec();
        if serial.first().is_some_and(|b| b & 0x80 != 0) {
            serial.insert(0, 0);
        }
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let der = params.signed_by(&key, &self.issuer)?.der().to_vec();
        Ok(DeviceIdentity {
            id,
            cert_der: der,
            chain_der: self.chain_der.clone(),
            key_der: key.serialize_der(),
        })
    }
}

impl DeviceIdentity {
    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", &self.cert_der)
    }

    /// The certificate and its intermediates, leaf first (what the device sends).
    pub fn chain(&self) -> Vec<Vec<u8>> {
        let mut chain = vec![self.cert_der.clone()];
        chain.extend(self.chain_der.iter().cloned());
        chain
    }

    /// [`DeviceIdentity::chain`] as PEM: a client's `--cert` file.
    pub fn chain_pem(&self) -> String {
        self.chain().iter().map(|der| pem("CERTIFICATE", der)).collect()
    }

    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", &self.key_der)
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// PEM-encodes DER.
pub fn pem(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
