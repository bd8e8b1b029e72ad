//! Names the certificate behind a rustls-webpki rejection.
//!
//! webpki decides; its errors say *what* failed but not *on which certificate*. Operators need
//! both ("intermediate `CN=Factory 7` expired", not "expired"). This module reconstructs the
//! chain the device most plausibly meant — by issuer/subject names, preferring links whose
//! signatures verify — and finds the certificate that matches webpki's verdict. It never
//! overturns a verdict: its only output is the error to report.

use super::cert::ParsedCert;
use super::error::{ChainError, RevocationSource};
use super::signed_data::{SignedDataError, verify_certificate_signature};
use super::store::TrustStore;
use crate::Timestamp;
use x509_cert::ext::pkix::ExtendedKeyUsage;

/// The longest chain we reconstruct (device + intermediates).
const MAX_WALK: usize = MAX_PRESENTED + 2;
const MAX_PRESENTED: usize = super::store::MAX_PRESENTED_INTERMEDIATES;

/// The chain by names: `certs[0]` is the device certificate, each next one the issuer of the
/// previous; `anchor` is the registered CA that issued the last one, if any.
struct NameChain<'a> {
    certs: Vec<&'a ParsedCert>,
    anchor: Option<&'a ParsedCert>,
}

fn issued(child: &ParsedCert, issuer: &ParsedCert) -> bool {
    child.issuer() == issuer.subject()
        && verify_certificate_signature(child, issuer.cert.tbs_certificate().subject_public_key_info()).is_ok()
}

fn walk<'a>(leaf: &'a ParsedCert, pool: &[&'a ParsedCert], store: &'a TrustStore) -> NameChain<'a> {
    let mut certs = vec![leaf];
    loop {
        let cur = certs[certs.len() - 1];
        let anchors: Vec<&ParsedCert> = store
            .cas()
            .iter()
            .map(|c| &c.cert)
            .filter(|a| cur.issuer() == a.subject())
            .collect();
        if !anchors.is_empty() {
            let anchor = anchors.iter().copied().find(|a| issued(cur, a)).unwrap_or(anchors[0]);
            return NameChain {
                certs,
                anchor: Some(anchor),
            };
        }
        if certs.len() >= MAX_WALK {
            return NameChain { certs, anchor: None };
        }
        let candidates: Vec<&ParsedCert> = pool
            .iter()
            .copied()
            .filter(|c| cur.issuer() == c.subject() && !certs.iter().any(|seen| seen.der == c.der))
            .collect();
        match candidates
            .iter()
            .copied()
            .find(|c| issued(cur, c))
            .or(candidates.first().copied())
        {
            Some(next) => certs.push(next),
            None => return NameChain { certs, anchor: None },
        }
    }
}

fn subject(c: &ParsedCert) -> String {
    c.info.subject.clone()
}

pub(crate) fn explain(
    err: &webpki::Error,
    leaf: &ParsedCert,
    pool: &[&ParsedCert],
    store: &TrustStore,
    now: Timestamp,
) -> ChainError {
    use webpki::Error as E;
    let chain = walk(leaf, pool, store);
    // Every certificate that could be on the path, chain order first.
    let everyone = || chain.certs.iter().copied().chain(pool.iter().copied());
    match err {
        E::CertExpired { not_after, .. } => {
            let not_after = Timestamp::from(*not_after);
            let c = everyone().find(|c| c.info.not_after == not_after).unwrap_or(leaf);
            ChainError::Expired {
                subject: subject(c),
                not_after,
                now,
            }
        }
        E::CertNotValidYet { not_before, .. } => {
            let not_before = Timestamp::from(*not_before);
            let c = everyone().find(|c| c.info.not_before == not_before).unwrap_or(leaf);
            ChainError::NotYetValid {
                subject: subject(c),
                not_before,
                now,
            }
        }
        E::UnknownIssuer => {
            let top = chain.certs[chain.certs.len() - 1];
            if let Some(ca) = store.distrusted().iter().find(|d| top.issuer() == d.subject()) {
                return ChainError::CaRevoked {
                    subject: subject(top),
                    ca: subject(ca),
                };
            }
            ChainError::UnknownIssuer {
                subject: subject(top),
                issuer: top.info.issuer.clone(),
            }
        }
        E::InvalidSignatureForPublicKey => match failing_link(&chain, SignedDataError::BadSignature) {
            Some(c) => ChainError::BadSignature {
                subject: subject(c),
                issuer: c.info.issuer.clone(),
            },
            None => ChainError::BadSignature {
                subject: subject(leaf),
                issuer: leaf.info.issuer.clone(),
            },
        },
        E::CaUsedAsEndEntity => ChainError::CaUsedAsLeaf { subject: subject(leaf) },
        E::EndEntityUsedAsCa => {
            let c = chain
                .certs
                .iter()
                .skip(1)
                .copied()
                .find(|c| !c.info.is_ca)
                .or(pool.iter().copied().find(|c| !c.info.is_ca));
            ChainError::LeafUsedAsCa {
                subject: c.map_or_else(|| subject(leaf), subject),
            }
        }
        E::PathLenConstraintViolated => {
            // A CA at position i (1-based above the device) has i-1 intermediates below it.
            let issuers = chain.certs.iter().skip(1).copied().chain(chain.anchor);
            for (below, ca) in issuers.enumerate() {
                if let Some((true, Some(n))) = ca.basic_constraints
                    && below > usize::from(n)
                {
                    return ChainError::PathLenExceeded {
                        subject: subject(ca),
                        path_len: n,
                    };
                }
            }
            ChainError::PathLenExceeded {
                subject: subject(leaf),
                path_len: 0,
            }
        }
        E::UnsupportedCriticalExtension => everyone()
            .find_map(|c| c.unknown_critical_extension().map(|oid| (c, oid)))
            .map_or_else(
                || ChainError::UnsupportedCriticalExtension {
                    subject: subject(leaf),
                    oid: "unknown".into(),
                },
                |(c, oid)| ChainError::UnsupportedCriticalExtension {
                    subject: subject(c),
                    oid,
                },
            ),
        E::UnsupportedCertVersion => ChainError::UnsupportedVersion { subject: subject(leaf) },
        E::CertRevoked => {
            for c in &chain.certs {
                if store
                    .crls()
                    .iter()
                    .any(|crl| &crl.issuer == c.issuer() && crl.lists(c.serial()))
                {
                    return ChainError::Revoked {
                        subject: subject(c),
                        serial: c.info.serial.clone(),
                        via: RevocationSource::Crl,
                    };
                }
            }
            ChainError::Revoked {
                subject: subject(leaf),
                serial: leaf.info.serial.clone(),
                via: RevocationSource::Crl,
            }
        }
        E::CrlExpired { next_update, .. } => {
            let next_update = Timestamp::from(*next_update);
            let issuer = store
                .crls()
                .iter()
                .find(|c| c.info().next_update == next_update)
                .map_or_else(|| "unknown".into(), |c| c.info().issuer.clone());
            ChainError::CrlExpired {
                issuer,
                next_update,
                now,
            }
        }
        E::InvalidCrlSignatureForPublicKey => {
            let issuer = chain
                .certs
                .iter()
                .find(|c| store.crls().iter().any(|crl| &crl.issuer == c.issuer()))
                .map_or_else(|| "unknown".into(), |c| c.info.issuer.clone());
            ChainError::CrlBadSignature { issuer }
        }
        E::UnsupportedCrlVersion
        | E::UnsupportedDeltaCrl
        | E::UnsupportedIndirectCrl
        | E::UnsupportedRevocationReason
        | E::UnsupportedRevocationReasonsPartitioning
        | E::UnsupportedCrlIssuingDistributionPoint
        | E::IssuerNotCrlSigner
        | E::InvalidCrlNumber => {
            let issuer = chain
                .certs
                .iter()
                .find(|c| store.crls().iter().any(|crl| &crl.issuer == c.issuer()))
                .map_or_else(|| "unknown".into(), |c| c.info.issuer.clone());
            ChainError::CrlUnusable {
                issuer,
                detail: format!("{err:?}"),
            }
        }
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
        | E::UnsupportedCrlSignatureAlgorithmContext(_)
        | E::UnsupportedCrlSignatureAlgorithmForPublicKeyContext(_) => {
            let c = failing_link(&chain, SignedDataError::UnsupportedAlgorithm).unwrap_or(leaf);
            ChainError::UnsupportedAlgorithm {
                subject: subject(c),
                detail: format!("{err:?}"),
            }
        }
        E::RequiredEkuNotFoundContext(_) => {
            let c = chain.certs.iter().copied().find(|c| has_eku(c)).unwrap_or(leaf);
            ChainError::NotForClientAuth { subject: subject(c) }
        }
        E::NameConstraintViolation => ChainError::NameConstraintViolation { subject: subject(leaf) },
        E::MaximumPathBuildCallsExceeded
        | E::MaximumPathDepthExceeded
        | E::MaximumSignatureChecksExceeded
        | E::MaximumNameConstraintComparisonsExceeded => ChainError::PathTooComplex {
            detail: format!("{err:?}"),
        },
        E::BadDer
        | E::BadDerTime
        | E::TrailingData(_)
        | E::ExtensionValueInvalid
        | E::MalformedExtensions
        | E::InvalidSerialNumber
        | E::InvalidCertValidity => ChainError::Malformed {
            what: format!("certificate `{}` or its chain", leaf.info.subject),
            detail: format!("{err:?}"),
        },
        other => ChainError::Other {
            subject: subject(leaf),
            detail: format!("{other:?}"),
        },
    }
}

/// The first certificate in the name chain whose signature fails with `want` under its issuer.
fn failing_link<'a>(chain: &NameChain<'a>, want: SignedDataError) -> Option<&'a ParsedCert> {
    let issuers = chain.certs.iter().skip(1).copied().chain(chain.anchor);
    chain.certs.iter().copied().zip(issuers).find_map(|(child, issuer)| {
        match verify_certificate_signature(child, issuer.cert.tbs_certificate().subject_public_key_info()) {
            Err(e) if e == want => Some(child),
            _ => None,
        }
    })
}

fn has_eku(c: &ParsedCert) -> bool {
    matches!(
        c.cert.tbs_certificate().get_extension::<ExtendedKeyUsage>(),
        Ok(Some(_))
    )
}
