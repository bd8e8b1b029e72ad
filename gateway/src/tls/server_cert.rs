//! The server's own certificate: given by the operator, or generated on first start under a
//! generated local server CA (P-256), whose certificate devices install as their trust anchor
//! (`DIR/tls/server-ca.pem`). Generated keys are written owner-only.

use crate::secret_file::{self, Existing};
use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::path::{Path, PathBuf};

/// Where the generated identity lives.
#[derive(Clone, Debug)]
pub struct ServerIdentityPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerIdentityPaths {
    pub fn under(data_dir: &Path) -> Self {
        let dir = data_dir.join("tls");
        ServerIdentityPaths {
            ca_cert: dir.join("server-ca.pem"),
            ca_key: dir.join("server-ca.key"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

/// The names the generated certificate covers: `localhost`, loopback addresses, this host's
/// name, and every extra name given.
pub fn default_names(extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Some(host) = host_name() {
        names.push(host);
    }
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

pub(crate) fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim();
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        .then(|| name.to_owned())
}

/// Loads the generated identity, creating it if missing; regenerates the server certificate
/// (same CA) when its names no longer cover `names`.
pub fn ensure_generated(
    paths: &ServerIdentityPaths,
    names: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    if let Some(dir) = paths.cert.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let issuer = if paths.ca_cert.exists() && paths.ca_key.exists() {
        let key_pem = std::fs::read_to_string(&paths.ca_key)?;
        let key = KeyPair::from_pem(&key_pem).context("server CA key unreadable")?;
        let cert_pem = std::fs::read_to_string(&paths.ca_cert)?;
        rcgen::Issuer::from_ca_cert_pem(&cert_pem, key).context("server CA certificate unreadable")?
    } else {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "fleetward");
        dn.push(DnType::CommonName, "fleetward local server CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = params.not_before + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        secret_file::write(&paths.ca_key, key.serialize_pem().as_bytes(), Existing::Replace)?;
        std::fs::write(&paths.ca_cert, cert.pem())?;
        rcgen::Issuer::new(params, key)
    };
    let names_file = paths.cert.with_extension("names");
    let current_names_ok = paths.cert.exists()
        && paths.key.exists()
        && std::fs::read_to_string(&names_file)
            .map(|have| names.iter().all(|n| have.lines().any(|l| l == n)))
            .unwrap_or(false);
    if !current_names_ok {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "fleetward");
        dn.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("localhost"),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.as_str().try_into()?)),
            })
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = params.not_before + time::Duration::days(825);
        let cert = params.signed_by(&key, &issuer)?;
        secret_file::write(&paths.key, key.serialize_pem().as_bytes(), Existing::Replace)?;
        std::fs::write(&paths.cert, cert.pem())?;
        std::fs::write(&names_file, names.join("\n"))?;
    }
    load_pem(&paths.cert, &paths.key)
}

/// Loads a PEM certificate chain and private key.
pub fn load_pem(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("{} is not a PEM private key", key.display()))?;
    Ok((chain, key))
}
