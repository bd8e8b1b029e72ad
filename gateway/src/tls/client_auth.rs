//! The `ClientCertVerifier`: every handshake's client chain goes through
//! `verifier::x509::TrustStore::verify_device` against the *current* trust snapshot, so CAs
//! registered or revoked at run time count from the next handshake on. Devices revoked in the
//! registry fail here too (TLS alert `certificate_revoked`).
//!
//! The verdict of a handshake is handed to the connection that made it (keyed by the chain's
//! `chain_key`, as the verdict cache is), so the device identity is not computed twice; a
//! resumed session, which skips this verifier, is verified afresh after its handshake (see
//! `listener`).
//!
//! A device that reconnects with the same chain bytes, under the same trust snapshot and within
//! the chain's validity, reuses its earlier verdict (`VerdictCache`): the chain's signatures
//! and policy cannot have changed. What a verdict cannot vouch for is checked on every
//! handshake as before: the device's own revocation here, and possession of the key, which
//! rustls checks through the CertificateVerify signature (`verify_tls1x_signature` below).

use crate::eventlog::EventSink;
use crate::stats::{Stats, inc};
use crate::trust::TrustState;
use registry::NewEvent;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use verifier::Timestamp;
use verifier::x509::{ChainError, TrustStore, VerifiedDevice};

/// Verdicts waiting for their connection; bounded (handshakes that verified and then failed
/// leave entries behind, so the map is cleared when it grows past this).
const PENDING_VERDICTS: usize = 16_384;
/// Chains seen once (their keys only), and verdicts kept for chains seen again. A verdict is
/// kept only from a device's second handshake on, so a fleet that connects once and stays
/// (most of them) costs 32 bytes per device here, not a verdict each.
const SEEN_CHAINS: usize = 65_536;
const CACHED_VERDICTS: usize = 4_096;

/// Verdicts for chains that reconnect, valid for one trust store (a new snapshot empties it).
#[derive(Debug, Default)]
struct VerdictCache {
    /// The store the verdicts were reached against (held weakly: its address is not reused
    /// while this lives, so comparing it is exact).
    store: Weak<TrustStore>,
    seen: HashSet<[u8; 32]>,
    verdicts: HashMap<[u8; 32], CachedVerdict>,
}

#[derive(Debug)]
struct CachedVerdict {
    device: Arc<VerifiedDevice>,
    /// The verdict holds for `from <= now < until`: inside every certificate's validity on the
    /// path and before the earliest CRL `nextUpdate` of the store.
    from: Timestamp,
    until: Timestamp,
}

impl VerdictCache {
    fn for_store(&mut self, store: &Arc<TrustStore>) -> &mut Self {
        if !std::ptr::eq(self.store.as_ptr(), Arc::as_ptr(store)) {
            *self = VerdictCache {
                store: Arc::downgrade(store),
                ..VerdictCache::default()
            };
        }
        self
    }

    fn get(&self, key: &[u8; 32], now: Timestamp) -> Option<Arc<VerifiedDevice>> {
        self.verdicts
            .get(key)
            .filter(|v| v.from <= now && now < v.until)
            .map(|v| v.device.clone())
    }

    fn remember(&mut self, key: [u8; 32], device: &Arc<VerifiedDevice>, store: &TrustStore) {
        if !self.seen.contains(&key) {
            if self.seen.len() >= SEEN_CHAINS {
                self.seen.clear();
            }
            self.seen.insert(key);
            return;
        }
        let certs = || {
            std::iter::once(&device.certificate)
                .chain(&device.intermediates)
                .chain(std::iter::once(&device.ca))
        };
        let from = certs().map(|c| c.not_before).max();
        let until = certs().map(|c| c.not_after).chain(store.verdicts_valid_until()).min();
        let (Some(from), Some(until)) = (from, until) else {
            return;
        };
        if self.verdicts.len() >= CACHED_VERDICTS {
            self.verdicts.clear();
        }
        self.verdicts.insert(
            key,
            CachedVerdict {
                device: device.clone(),
                from,
                until,
            },
        );
    }
}

/// The cache key of a presented chain: SHA-256 over each certificate, length-prefixed.
fn chain_key(leaf: &[u8], intermediates: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for cert in std::iter::once(leaf).chain(intermediates.iter().copied()) {
        h.update(u32::try_from(cert.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(cert);
    }
    h.finalize().into()
}

#[derive(Debug)]
pub struct DeviceCertVerifier {
    trust: Arc<TrustState>,
    stats: Arc<Stats>,
    events: EventSink,
    algorithms: WebPkiSupportedAlgorithms,
    verdicts: Mutex<HashMap<[u8; 32], Arc<VerifiedDevice>>>,
    cache: Mutex<VerdictCache>,
}

impl DeviceCertVerifier {
    pub fn new(trust: Arc<TrustState>, stats: Arc<Stats>, events: EventSink) -> Self {
        DeviceCertVerifier {
            trust,
            stats,
            events,
            algorithms: rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
            verdicts: Mutex::new(HashMap::new()),
            cache: Mutex::default(),
        }
    }

    /// Verifies a chain against the current snapshot (also used after resumed handshakes).
    pub fn verify(&self, leaf: &[u8], intermediates: &[&[u8]], now: Timestamp) -> Result<Arc<VerifiedDevice>, Refusal> {
        self.verify_keyed(chain_key(leaf, intermediates), leaf, intermediates, now)
    }

    /// [`Self::verify`] with the chain's key already computed.
    fn verify_keyed(
        &self,
        key: [u8; 32],
        leaf: &[u8],
        intermediates: &[&[u8]],
        now: Timestamp,
    ) -> Result<Arc<VerifiedDevice>, Refusal> {
        let snapshot = self.trust.snapshot();
        let cached = crate::locks::lock(&self.cache)
            .for_store(&snapshot.store)
            .get(&key, now);
        let device = match cached {
            Some(device) => {
                inc(&self.stats.chain_verdicts_reused);
                device
            }
            None => {
                let device = Arc::new(
                    snapshot
                        .store
                        .verify_device(leaf, intermediates, now)
                        .map_err(Refusal::Chain)?,
                );
                crate::locks::lock(&self.cache)
                    .for_store(&snapshot.store)
                    .remember(key, &device, &snapshot.store);
                device
            }
        };
        if snapshot.revoked_devices.contains(device.device_id.as_str()) {
            return Err(Refusal::DeviceRevoked {
                device_id: device.device_id.as_str().to_owned(),
            });
        }
        Ok(device)
    }

    /// The verdict this process's handshake reached for this chain, if it just made one.
    pub fn take_verdict(&self, leaf: &[u8], intermediates: &[&[u8]]) -> Option<Arc<VerifiedDevice>> {
        self.lock().remove(&chain_key(leaf, intermediates))
    }

    /// Records a refusal: counter, event (with the typed check) and log line.
    pub fn report(&self, refusal: &Refusal, peer: Option<std::net::SocketAddr>) {
        inc(&self.stats.chains_rejected);
        self.stats.rejected(match refusal {
            Refusal::Chain(e) => e.check(),
            Refusal::DeviceRevoked { .. } => "device_revoked",
        });
        let event = match refusal {
            Refusal::Chain(e) => NewEvent::new("chain.rejected", "gateway")
                .reason(e.to_string())
                .detail(serde_json::json!({ "check": e.check(), "error": e, "peer": peer.map(|p| p.to_string()) })),
            Refusal::DeviceRevoked { device_id } => NewEvent::new("device.refused", "gateway")
                .device(device_id)
                .reason("device is revoked")
                .detail(serde_json::json!({ "check": "device_revoked", "peer": peer.map(|p| p.to_string()) })),
        };
        self.events.emit(event);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<VerifiedDevice>>> {
        crate::locks::lock(&self.verdicts)
    }
}

/// Why a client certificate was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Chain(ChainError),
    #[error("device `{device_id}` is revoked")]
    DeviceRevoked { device_id: String },
}

impl Refusal {
    /// The TLS alert the client sees.
    pub fn to_rustls(&self) -> rustls::Error {
        let e = match self {
            Refusal::DeviceRevoked { .. } => CertificateError::Revoked,
            Refusal::Chain(c) => match c {
                ChainError::Expired { .. } => CertificateError::Expired,
                ChainError::NotYetValid { .. } => CertificateError::NotValidYet,
                ChainError::UnknownIssuer { .. } => CertificateError::UnknownIssuer,
                ChainError::CaRevoked { .. } | ChainError::Revoked { .. } => CertificateError::Revoked,
                ChainError::BadSignature { .. } => CertificateError::BadSignature,
                ChainError::Malformed { .. } => CertificateError::BadEncoding,
                ChainError::NotForClientAuth { .. } => CertificateError::InvalidPurpose,
                _ => CertificateError::ApplicationVerificationFailure,
            },
        };
        rustls::Error::InvalidCertificate(e)
    }
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// Backend applications authenticate with an API token instead of a certificate; the MQTT
    /// layer refuses a certificate-less CONNECT that does not carry one.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The set changes at run time; an empty list lets every client offer its certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let now = Timestamp::from_unix(i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
        let presented: Vec<&[u8]> = intermediates.iter().map(|c| c.as_ref()).collect();
        let key = chain_key(end_entity.as_ref(), &presented);
        match self.verify_keyed(key, end_entity.as_ref(), &presented, now) {
            Ok(device) => {
                let mut verdicts = self.lock();
                if verdicts.len() >= PENDING_VERDICTS {
                    verdicts.clear();
                }
                verdicts.insert(key, device);
                Ok(ClientCertVerified::assertion())
            }
            Err(refusal) => {
                self.report(&refusal, None);
                Err(refusal.to_rustls())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetward_test_support::TestCa;
    use verifier::x509::{Crl, ProvisioningCa};

    fn store(ca: &TestCa, crl: Option<&[u8]>) -> Arc<TrustStore> {
        let mut store = TrustStore::new();
        store.add_ca(ProvisioningCa::from_der(&ca.der).unwrap_or_else(|e| panic!("{e}")));
        if let Some(der) = crl {
            store.add_crl(Crl::from_der(der).unwrap_or_else(|e| panic!("{e}")));
        }
        Arc::new(store)
    }

    fn at(rfc3339: &str) -> Timestamp {
        Timestamp::parse_rfc3339(rfc3339).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_verdict_is_reused_only_for_the_same_chain_store_and_validity() {
        let ca = TestCa::stsafe_root("VERDICT CACHE TEST CA");
        let (a, b) = (
            ca.issue_stsafe_device("eval3", &[1]),
            ca.issue_stsafe_device("eval3", &[2]),
        );
        let now = at("2030-01-01T00:00:00Z");
        let first = store(&ca, None);
        let verdict =
            |s: &TrustStore, der: &[u8]| Arc::new(s.verify_device(der, &[], now).unwrap_or_else(|e| panic!("{e}")));
        let (key_a, key_b) = (chain_key(&a.der, &[]), chain_key(&b.der, &[]));
        assert_ne!(
            key_a,
            chain_key(&a.der, &[&ca.der[..]]),
            "the intermediates are part of the key"
        );

        let mut cache = VerdictCache::default();
        let device = verdict(&first, &a.der);
        cache.for_store(&first).remember(key_a, &device, &first);
        assert!(cache.get(&key_a, now).is_none(), "a first sighting keeps only the key");
        cache.for_store(&first).remember(key_a, &device, &first);
        let reused = cache
            .for_store(&first)
            .get(&key_a, now)
            .expect("reused from the second sighting");
        assert_eq!(reused.device_id, device.device_id);
        assert!(
            cache.get(&key_b, now).is_none(),
            "another chain is not confused with it"
        );

        // Outside the chain's validity (the device certificate ends in 2050; issued from 2024).
        assert!(cache.get(&key_a, at("2051-01-01T00:00:00Z")).is_none());
        assert!(cache.get(&key_a, at("2020-01-01T00:00:00Z")).is_none());

        // A new trust store (any registry change rebuilds it) empties the cache.
        let second = store(&ca, None);
        assert!(cache.for_store(&second).get(&key_a, now).is_none());

        // With a CRL, a verdict ends at the CRL's nextUpdate.
        let crl = ca.crl(&[&[0x7f]], "2029-06-01T00:00:00Z", "2030-02-01T00:00:00Z");
        let with_crl = store(&ca, Some(&crl));
        let device = verdict(&with_crl, &a.der);
        for _ in 0..2 {
            cache.for_store(&with_crl).remember(key_a, &device, &with_crl);
        }
        assert!(cache.get(&key_a, now).is_some());
        assert!(
            cache.get(&key_a, at("2030-02-01T00:00:00Z")).is_none(),
            "past the CRL's nextUpdate"
        );
    }
}
