//! Provisioning CAs and device chain validation.
//!
//! Path validation is rustls-webpki's, whole: signatures, validity, basicConstraints,
//! pathLen, critical extensions, name constraints, EKU, and CRLs (signature, issuer,
//! nextUpdate). fleetward adds what is policy: which registered CA a device belongs to, the
//! operator's revoked-serial lists, and the device identity.

use super::cert::{CertInfo, ParsedCert};
use super::diagnose;
use super::error::{ChainError, RevocationSource};
use super::identity::{DeviceId, IdentityPolicy, IdentitySource};
use super::revocation::{Crl, RevokedSerials};
use crate::Timestamp;
use crate::challenge::DigestMode;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use serde::Serialize;
use std::cell::RefCell;
use webpki::{
    CertRevocationList, ExpirationPolicy, KeyUsage, RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};

/// What our path-policy hook returns to webpki for a rejection it recorded itself. webpki never
/// raises this error while building client-certificate chains (it comes only from name checks we
/// do not ask for), so seeing it back means "the recorded policy reason is the answer".
const POLICY_SENTINEL: webpki::Error = webpki::Error::UnsupportedNameType;

/// At most this many intermediates may accompany a device certificate. Real chains are 0–3
/// deep; the bound keeps path building cheap for hostile peers.
pub const MAX_PRESENTED_INTERMEDIATES: usize = 8;

/// A registered provisioning CA (a root or an intermediate) and the policy for its devices.
#[derive(Debug)]
pub struct ProvisioningCa {
    pub(crate) cert: ParsedCert,
    anchor: TrustAnchor<'static>,
    /// How devices under this CA are named.
    pub identity: IdentityPolicy,
    /// How devices under this CA sign challenges (default: the challenge is the digest).
    pub digest_mode: DigestMode,
    /// Serials the operator has revoked under this CA.
    pub revoked_serials: RevokedSerials,
}

impl ProvisioningCa {
    /// Reads a CA certificate (DER). Registration checks (proof of possession, key quality,
    /// basicConstraints) are [`super::check_ca_registration`]'s job; this only parses.
    pub fn from_der(der: &[u8]) -> Result<Self, ChainError> {
        let cert = ParsedCert::from_der(der).map_err(|e| ChainError::Malformed {
            what: "provisioning CA certificate".into(),
            detail: e.0,
        })?;
        let anchor = webpki::anchor_from_trusted_cert(&cert.der)
            .map_err(|e| ChainError::Malformed {
                what: format!("provisioning CA `{}`", cert.info.subject),
                detail: format!("{e:?}"),
            })?
            .to_owned();
        Ok(ProvisioningCa {
            cert,
            anchor,
            identity: IdentityPolicy::default(),
            digest_mode: DigestMode::default(),
            revoked_serials: RevokedSerials::new(),
        })
    }

    pub fn with_identity(mut self, identity: IdentityPolicy) -> Self {
        self.identity = identity;
        self
    }

    pub fn with_digest_mode(mut self, mode: DigestMode) -> Self {
        self.digest_mode = mode;
        self
    }

    pub fn with_revoked_serials(mut self, serials: RevokedSerials) -> Self {
        self.revoked_serials = serials;
        self
    }

    pub fn info(&self) -> &CertInfo {
        &self.cert.info
    }

    /// SHA-256 of the CA certificate, lower-case hex: the CA's stable id.
    pub fn fingerprint(&self) -> &str {
        &self.cert.info.sha256
    }

    pub fn der(&self) -> &[u8] {
        &self.cert.der
    }
}

/// A device whose chain validated: who it is and how we know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifiedDevice {
    pub device_id: DeviceId,
    pub identity_source: IdentitySource,
    /// The device certificate.
    pub certificate: CertInfo,
    /// Intermediates on the validated path, device side first.
    pub intermediates: Vec<CertInfo>,
    /// The registered provisioning CA the path ends at (its `sha256` is the CA id).
    pub ca: CertInfo,
    pub digest_mode: DigestMode,
}

/// The trust anchors (registered provisioning CAs), extra known intermediates, and CRLs that
/// device chains are validated against. Immutable while in use: the gateway swaps a whole new
/// store when the registry changes, so a handshake always sees one consistent set.
#[derive(Debug, Default)]
pub struct TrustStore {
    cas: Vec<ProvisioningCa>,
    anchors: Vec<TrustAnchor<'static>>,
    intermediates: Vec<ParsedCert>,
    crls: Vec<Crl>,
    distrusted: Vec<ParsedCert>,
}

impl TrustStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces, by fingerprint) a provisioning CA.
    pub fn add_ca(&mut self, ca: ProvisioningCa) {
        self.remove_ca(&ca.cert.info.sha256.clone());
        self.anchors.push(ca.anchor.clone());
        self.cas.push(ca);
    }

    /// Removes a provisioning CA by fingerprint; returns whether it was present.
    pub fn remove_ca(&mut self, fingerprint: &str) -> bool {
        match self.cas.iter().position(|c| c.cert.info.sha256 == fingerprint) {
            Some(i) => {
                self.cas.remove(i);
                self.anchors.remove(i);
                true
            }
            None => false,
        }
    }

    /// Records a revoked provisioning CA: it is no anchor, and chains that would end at it
    /// fail with [`ChainError::CaRevoked`] instead of a bare "unknown issuer".
    pub fn distrust_ca(&mut self, der: &[u8]) -> Result<(), ChainError> {
        let cert = ParsedCert::from_der(der).map_err(|e| ChainError::Malformed {
            what: "revoked CA certificate".into(),
            detail: e.0,
        })?;
        self.remove_ca(&cert.info.sha256);
        self.distrusted.push(cert);
        Ok(())
    }

    /// Adds an intermediate CA certificate that devices may omit from their handshake. It is
    /// used to build paths, never trusted by itself.
    pub fn add_intermediate(&mut self, der: &[u8]) -> Result<(), ChainError> {
        let cert = ParsedCert::from_der(der).map_err(|e| ChainError::Malformed {
            what: "intermediate certificate".into(),
            detail: e.0,
        })?;
        if !self.intermediates.iter().any(|c| c.info.sha256 == cert.info.sha256) {
            self.intermediates.push(cert);
        }
        Ok(())
    }

    /// Adds a CRL; it is consulted for every certificate its issuer issued.
    pub fn add_crl(&mut self, crl: Crl) {
        self.crls.push(crl);
    }

    pub fn cas(&self) -> &[ProvisioningCa] {
        &self.cas
    }

    pub fn ca(&self, fingerprint: &str) -> Option<&ProvisioningCa> {
        self.cas.iter().find(|c| c.cert.info.sha256 == fingerprint)
    }

    /// The registered CA behind one of our trust anchors.
    fn ca_for_anchor(&self, anchor: &TrustAnchor<'_>) -> Option<&ProvisioningCa> {
        let index = self.anchors.iter().position(|a| std::ptr::eq(a, anchor)).or_else(|| {
            self.anchors.iter().position(|a| {
                a.subject == anchor.subject && a.subject_public_key_info == anchor.subject_public_key_info
            })
        })?;
        self.cas.get(index)
    }

    pub(crate) fn distrusted(&self) -> &[ParsedCert] {
        &self.distrusted
    }

    /// Until when a verdict reached against this store stays right for an unchanged chain,
    /// apart from the chain's own validity: the earliest `nextUpdate` of its CRLs (a CRL past
    /// it fails every chain it covers). `None`: no CRL, no limit.
    pub fn verdicts_valid_until(&self) -> Option<Timestamp> {
        self.crls.iter().map(|c| c.info().next_update).min()
    }

    pub(crate) fn crls(&self) -> &[Crl] {
        &self.crls
    }

    /// Validates a device certificate (DER) and the intermediates it presented, at `now`.
    ///
    /// On success the device's identity under its CA's policy; on failure the check that
    /// failed and the certificate it failed on.
    pub fn verify_device(
        &self,
        end_entity: &[u8],
        presented_intermediates: &[&[u8]],
        now: Timestamp,
    ) -> Result<VerifiedDevice, ChainError> {
        let leaf = ParsedCert::from_der(end_entity).map_err(|e| ChainError::Malformed {
            what: "device certificate".into(),
            detail: e.0,
        })?;
        if presented_intermediates.len() > MAX_PRESENTED_INTERMEDIATES {
            return Err(ChainError::PathTooComplex {
                detail: format!(
                    "{} intermediates presented (at most {MAX_PRESENTED_INTERMEDIATES})",
                    presented_intermediates.len()
                ),
            });
        }
        let presented = presented_intermediates
            .iter()
            .enumerate()
            .map(|(i, der)| {
                ParsedCert::from_der(der).map_err(|e| ChainError::Malformed {
                    what: format!(
                        "intermediate certificate #{} presented by `{}`",
                        i + 1,
                        leaf.info.subject
                    ),
                    detail: e.0,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pool: Vec<&ParsedCert> = presented.iter().chain(self.intermediates.iter()).collect();
        let explain = |e: webpki::Error| diagnose::explain(&e, &leaf, &pool, self, now);

        let ee = webpki::EndEntityCert::try_from(&leaf.der).map_err(explain)?;
        let pool_der: Vec<CertificateDer<'_>> = pool.iter().map(|c| CertificateDer::from(&c.der[..])).collect();
        let crl_refs: Vec<&CertRevocationList<'_>> = self.crls.iter().map(|c| &c.webpki).collect();
        let revocation = RevocationOptionsBuilder::new(&crl_refs).ok().map(|b| {
            b.with_depth(RevocationCheckDepth::Chain)
                .with_status_policy(UnknownStatusPolicy::Allow)
                .with_expiration_policy(ExpirationPolicy::Enforce)
                .build()
        });
        // Policy on each candidate path webpki has validated; a rejection lets webpki try others.
        // - The anchor's own pathLenConstraint: webpki treats a trust anchor as bare name + key
        //   (RFC 5280 §6.1.1 leaves anchor constraints optional), so a root registered with
        //   pathLen 0 would otherwise accept a sub-CA slipped in below it.
        // - keyCertSign (RFC 5280 §4.2.1.3): webpki does not read issuers' keyUsage, so a CA key
        //   restricted to, say, digitalSignature could otherwise mint device certificates.
        let policy_rejection: RefCell<Option<ChainError>> = RefCell::new(None);
        let path_policy = |path: &webpki::VerifiedPath<'_>| -> Result<(), webpki::Error> {
            let Some(ca) = self.ca_for_anchor(path.anchor()) else {
                return Ok(());
            };
            if let Some((true, Some(max))) = ca.cert.basic_constraints
                && path.intermediate_certificates().count() > usize::from(max)
            {
                return Err(webpki::Error::PathLenConstraintViolated);
            }
            let issuers = path
                .intermediate_certificates()
                .filter_map(|c| pool.iter().copied().find(|p| p.der.as_ref() == c.der().as_ref()))
                .chain(std::iter::once(&ca.cert));
            for issuer in issuers {
                if !issuer.can_sign_certificates {
                    *policy_rejection.borrow_mut() = Some(ChainError::IssuerCannotSignCertificates {
                        subject: issuer.info.subject.clone(),
                    });
                    return Err(POLICY_SENTINEL);
                }
            }
            Ok(())
        };
        let path = ee
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.anchors,
                &pool_der,
                now.to_unix_time(),
                KeyUsage::client_auth(),
                revocation,
                Some(&path_policy),
            )
            .map_err(|e| match policy_rejection.take() {
                Some(ours) if e == POLICY_SENTINEL => ours,
                _ => explain(e),
            })?;

        let ca = self.ca_for_anchor(path.anchor()).ok_or_else(|| ChainError::Other {
            subject: leaf.info.subject.clone(),
            detail: "validated path ends at an unknown anchor".into(),
        })?;
        let path_intermediates: Vec<&ParsedCert> = path
            .intermediate_certificates()
            .filter_map(|c| pool.iter().copied().find(|p| p.der.as_ref() == c.der().as_ref()))
            .collect();

        for cert in std::iter::once(&leaf).chain(path_intermediates.iter().copied()) {
            if ca.revoked_serials.contains(cert.serial()) {
                return Err(ChainError::Revoked {
                    subject: cert.info.subject.clone(),
                    serial: cert.info.serial.clone(),
                    via: RevocationSource::SerialList,
                });
            }
        }

        let device_id = ca.identity.derive(&leaf).map_err(|e| ChainError::IdentityInvalid {
            subject: leaf.info.subject.clone(),
            reason: e.to_string(),
        })?;
        Ok(VerifiedDevice {
            device_id,
            identity_source: ca.identity.source(),
            certificate: leaf.info.clone(),
            intermediates: path_intermediates.iter().map(|c| c.info.clone()).collect(),
            ca: ca.cert.info.clone(),
            digest_mode: ca.digest_mode,
        })
    }
}
