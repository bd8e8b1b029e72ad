//! The `ClientCertVerifier`: every handshake's client chain goes through
//! `verifier::x509::TrustStore::verify_device` against the *current* trust snapshot, so CAs
//! registered or revoked at run time count from the next handshake on. Devices revoked in the
//! registry fail here too (TLS alert `certificate_revoked`).
//!
//! The verdict of a handshake is handed to the connection that made it (keyed by the leaf's
//! SHA-256), so the device identity is not computed twice; a resumed session, which skips this
//! verifier, is verified afresh after its handshake (see `listener`).

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
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use verifier::Timestamp;
use verifier::x509::{ChainError, VerifiedDevice};

/// Verdicts waiting for their connection; bounded (handshakes that verified and then failed
/// leave entries behind, so the map is cleared when it grows past this).
const PENDING_VERDICTS: usize = 16_384;

#[derive(Debug)]
pub struct DeviceCertVerifier {
    trust: Arc<TrustState>,
    stats: Arc<Stats>,
    events: EventSink,
    algorithms: WebPkiSupportedAlgorithms,
    verdicts: Mutex<HashMap<[u8; 32], Arc<VerifiedDevice>>>,
}

impl DeviceCertVerifier {
    pub fn new(trust: Arc<TrustState>, stats: Arc<Stats>, events: EventSink) -> Self {
        DeviceCertVerifier {
            trust,
            stats,
            events,
            algorithms: rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
            verdicts: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies a chain against the current snapshot (also used after resumed handshakes).
    pub fn verify(&self, leaf: &[u8], intermediates: &[&[u8]], now: Timestamp) -> Result<VerifiedDevice, Refusal> {
        let snapshot = self.trust.snapshot();
        let device = snapshot
            .store
            .verify_device(leaf, intermediates, now)
            .map_err(Refusal::Chain)?;
        if snapshot.revoked_devices.contains(device.device_id.as_str()) {
            return Err(Refusal::DeviceRevoked {
                device_id: device.device_id.as_str().to_owned(),
            });
        }
        Ok(device)
    }

    /// The verdict this process's handshake reached for `leaf`, if it just made one.
    pub fn take_verdict(&self, leaf: &[u8]) -> Option<Arc<VerifiedDevice>> {
        let key: [u8; 32] = Sha256::digest(leaf).into();
        self.lock().remove(&key)
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
        match self.verify(end_entity.as_ref(), &presented, now) {
            Ok(device) => {
                let key: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
                let mut verdicts = self.lock();
                if verdicts.len() >= PENDING_VERDICTS {
                    verdicts.clear();
                }
                verdicts.insert(key, Arc::new(device));
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
