//! The API's JSON shapes (snake_case). Field names are a contract: clients, the CLI, the
//! dashboard and outside checks depend on them. Times are RFC 3339 strings in UTC.

use super::rfc3339;
use registry::{CaRecord, DeviceRecord, Event, Finding, TokenInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Every error: a stable code and a message for people.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code: `unauthorized`, `forbidden`, `not_found`, `conflict`, `bad_json`,
    /// `bad_query`, `too_large`, `ca_rejected`, …
    pub error: String,
    pub message: String,
    /// For refusals by a verifier check (CA registration, CRL upload): which check failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RegistrationCode {
    /// The subject CN a verification certificate must carry.
    pub registration_code: String,
}

/// How a CA's devices are named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IdentityName {
    /// Subject commonName (STSAFE: `<profile>-<die serial>`).
    #[default]
    Cn,
    /// Subject serialNumber attribute.
    SerialNumber,
    /// SHA-256 of the public key (hex).
    SpkiSha256,
}

impl IdentityName {
    pub fn source(self) -> verifier::x509::IdentitySource {
        use verifier::x509::IdentitySource as S;
        match self {
            IdentityName::Cn => S::CommonName,
            IdentityName::SerialNumber => S::SerialNumber,
            IdentityName::SpkiSha256 => S::SpkiSha256,
        }
    }

    pub fn of(source: verifier::x509::IdentitySource) -> Self {
        use verifier::x509::IdentitySource as S;
        match source {
            S::CommonName => IdentityName::Cn,
            S::SerialNumber => IdentityName::SerialNumber,
            S::SpkiSha256 => IdentityName::SpkiSha256,
        }
    }
}

/// What a secure element signs in challenge-response: the challenge itself or its hash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DigestModeName {
    #[default]
    Direct,
    Sha256,
    Sha384,
}

impl DigestModeName {
    pub fn mode(self) -> verifier::challenge::DigestMode {
        use verifier::challenge::DigestMode as M;
        match self {
            DigestModeName::Direct => M::Direct,
            DigestModeName::Sha256 => M::Sha256,
            DigestModeName::Sha384 => M::Sha384,
        }
    }
}

/// Registers a provisioning CA, with proof of possession of its key.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RegisterCa {
    /// The CA certificate (PEM).
    pub certificate_pem: String,
    /// A certificate signed by the CA's key whose subject CN is the registration code (PEM).
    pub verification_certificate_pem: String,
    /// Which certificate field names a device (default `cn`).
    #[serde(default)]
    pub identity: Option<IdentityName>,
    /// Optional regular expression device ids must match (anchored).
    #[serde(default)]
    pub identity_pattern: Option<String>,
    /// Challenge-response digest mode for this CA's secure elements (default `direct`).
    #[serde(default)]
    pub digest_mode: Option<DigestModeName>,
    /// New devices go straight to `active` (default `true`); `false` makes them `pending`.
    #[serde(default)]
    pub auto_activate: Option<bool>,
}

/// A registered provisioning CA.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Ca {
    /// SHA-256 of the certificate (hex).
    pub id: String,
    /// `active` or `revoked`.
    pub status: String,
    pub subject: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    /// The CA key, e.g. `ECDSA P-256`.
    pub key: String,
    pub identity: IdentityName,
    pub identity_pattern: Option<String>,
    pub digest_mode: DigestModeName,
    pub auto_activate: bool,
    pub registered_at: String,
    pub registered_by: String,
    pub revoked_at: Option<String>,
    pub revoked_reason: Option<String>,
    /// Devices registered under this CA.
    pub device_count: i64,
    pub certificate_pem: String,
}

impl Ca {
    pub fn from_record(c: &CaRecord, device_count: i64) -> Self {
        let info = verifier::x509::describe_certificate(&c.cert_der).ok();
        let field = |f: fn(&verifier::x509::CertInfo) -> String| info.as_ref().map(f).unwrap_or_default();
        Ca {
            id: c.id.clone(),
            status: match c.status {
                registry::CaStatus::Active => "active".into(),
                registry::CaStatus::Revoked => "revoked".into(),
            },
            subject: c.subject.clone(),
            serial: field(|i| i.serial.clone()),
            not_before: field(|i| rfc3339(i.not_before.unix().saturating_mul(1000))),
            not_after: field(|i| rfc3339(i.not_after.unix().saturating_mul(1000))),
            key: field(|i| i.key.clone()),
            identity: IdentityName::of(c.identity_source),
            identity_pattern: c.identity_pattern.clone(),
            digest_mode: match c.digest_mode.as_str() {
                "sha256" => DigestModeName::Sha256,
                "sha384" => DigestModeName::Sha384,
                _ => DigestModeName::Direct,
            },
            auto_activate: c.auto_activate,
            registered_at: rfc3339(c.registered_at_ms),
            registered_by: c.registered_by.clone(),
            revoked_at: c.revoked_at_ms.map(rfc3339),
            revoked_reason: c.revoked_reason.clone(),
            device_count,
            certificate_pem: sim_devices::pki::pem("CERTIFICATE", &c.cert_der),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CaList {
    pub items: Vec<Ca>,
    /// Always null: every CA fits in one page.
    pub next_cursor: Option<String>,
}

/// Why an action is taken (recorded in the audit trail).
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Reason {
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CaRevoked {
    #[serde(flatten)]
    pub ca: Ca,
    /// Devices revoked with the CA (in the same transaction).
    pub devices_revoked: u64,
}

/// A CRL for a registered CA.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CrlUpload {
    /// PEM (`-----BEGIN X509 CRL-----`).
    pub crl_pem: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CrlAccepted {
    pub ca_id: String,
    pub this_update: String,
    pub next_update: String,
    /// Serial numbers the CRL lists.
    pub revoked: usize,
}

/// The device certificate on record.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceCertificate {
    pub sha256: String,
    pub serial: String,
    pub not_after: String,
    /// The device key, e.g. `ECDSA P-256`.
    pub key: Option<String>,
}

/// A device.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Device {
    pub id: String,
    /// `pending`, `active`, `quarantined` or `revoked`.
    pub status: String,
    pub ca_id: String,
    /// `unknown`, `verified`, `failed` or `stale`.
    pub integrity: String,
    /// The firmware version the device last reported (attested), if any.
    pub firmware: Option<String>,
    /// SHA-256 of that firmware image (hex).
    pub firmware_digest: Option<String>,
    pub first_seen: String,
    pub last_seen: String,
    pub status_changed_at: String,
    pub integrity_at: Option<String>,
    pub integrity_reason: Option<String>,
    /// An MQTT session is open on this node now.
    pub online: bool,
    pub connections: i64,
    pub last_peer: Option<String>,
    pub tls_version: Option<String>,
    pub tls_suite: Option<String>,
    pub certificate: DeviceCertificate,
}

impl Device {
    pub fn from_record(d: &DeviceRecord, online: bool) -> Self {
        Device {
            id: d.id.clone(),
            status: d.status.as_str().into(),
            ca_id: d.ca_id.clone(),
            integrity: d.integrity.as_str().into(),
            firmware: d.firmware_version.clone(),
            firmware_digest: d.firmware_digest.clone(),
            first_seen: rfc3339(d.first_seen_ms),
            last_seen: rfc3339(d.last_seen_ms),
            status_changed_at: rfc3339(d.status_changed_at_ms),
            integrity_at: d.integrity_at_ms.map(rfc3339),
            integrity_reason: d.integrity_reason.clone(),
            online,
            connections: d.connections,
            last_peer: d.last_peer.clone(),
            tls_version: d.tls_version.clone(),
            tls_suite: d.tls_suite.clone(),
            certificate: DeviceCertificate {
                sha256: d.cert_sha256.clone(),
                serial: d.cert_serial.clone(),
                not_after: rfc3339(d.cert_not_after_ms),
                key: d.cert_key.clone(),
            },
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceList {
    pub items: Vec<Device>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// One certificate of a device's chain, as the registry knows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChainLink {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub key: String,
    pub sha256: String,
}

/// A device with its labels, certificate chain and recent events.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub device: Device,
    pub labels: BTreeMap<String, String>,
    /// Device certificate first, then its provisioning CA.
    pub chain: Vec<ChainLink>,
    pub certificate_pem: String,
    /// The device's 50 most recent events, newest first.
    pub recent_events: Vec<EventItem>,
}

/// A device's labels (`PUT` replaces them all).
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Labels {
    pub labels: BTreeMap<String, String>,
}

/// One entry of the audit trail.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EventItem {
    pub id: i64,
    pub at: String,
    /// Dotted kind, e.g. `device.registered`, `chain.rejected`, `device.status`.
    pub kind: String,
    /// Who: `jitr`, `gateway`, `api:<token id>`, …
    pub actor: String,
    pub device_id: Option<String>,
    pub ca_id: Option<String>,
    pub reason: Option<String>,
    /// Structured details (e.g. the failed `check`).
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

impl From<&Event> for EventItem {
    fn from(e: &Event) -> Self {
        EventItem {
            id: e.id,
            at: rfc3339(e.at_ms),
            kind: e.kind.clone(),
            actor: e.actor.clone(),
            device_id: e.device_id.clone(),
            ca_id: e.ca_id.clone(),
            reason: e.reason.clone(),
            detail: e.detail.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub items: Vec<EventItem>,
    pub next_cursor: Option<String>,
}

/// A count in a time bucket.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Bucket {
    /// Start of the bucket.
    pub start: String,
    pub count: i64,
}

/// The fleet at a glance.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct FleetSummary {
    pub total: i64,
    /// Device sessions open on this node now.
    pub online: usize,
    pub by_status: BTreeMap<String, i64>,
    pub by_integrity: BTreeMap<String, i64>,
    /// The 20 most common firmware versions (`unknown`: none reported).
    pub by_firmware: BTreeMap<String, i64>,
    /// Devices per provisioning CA id.
    pub by_ca: BTreeMap<String, i64>,
    /// Start of the rate window.
    pub since: String,
    pub bucket_seconds: i64,
    /// Devices onboarded (just-in-time registrations) per bucket.
    pub onboarding: Vec<Bucket>,
    /// Connections refused (bad chains and refused MQTT sessions) per bucket.
    pub rejections: Vec<Bucket>,
    /// LoRaWAN frames and joins refused (bad MIC, replay, counter gap, unknown device) per bucket.
    pub lorawan_refusals: Vec<Bucket>,
    /// Sigfox frames and callbacks refused (UL-AUTH, replayed sequence number, callback secret or
    /// source, malformed) per bucket.
    pub sigfox_refusals: Vec<Bucket>,
}

/// An audit finding: a check that found non-compliant devices or CAs.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditFinding {
    /// The check, e.g. `device_certificate_shared`, `device_certificate_expiring`.
    pub check: String,
    /// `critical`, `high`, `medium` or `low`.
    pub severity: String,
    pub title: String,
    pub description: String,
    pub affected_count: i64,
    /// `affected_count` is a lower bound.
    pub affected_count_capped: bool,
    /// Some affected device ids (at most `sample`).
    pub affected_devices: Vec<String>,
    pub affected_cas: Vec<String>,
    pub suggested_action: String,
}

impl From<&Finding> for AuditFinding {
    fn from(f: &Finding) -> Self {
        AuditFinding {
            check: f.check.into(),
            severity: f.severity.as_str().into(),
            title: f.title.clone(),
            description: f.description.clone(),
            affected_count: f.affected_count,
            affected_count_capped: f.affected_count_capped,
            affected_devices: f.affected_devices.clone(),
            affected_cas: f.affected_cas.clone(),
            suggested_action: f.suggested_action.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Audit {
    pub generated_at: String,
    /// Every check that ran (a check with nothing to report has no finding).
    pub checks_run: Vec<String>,
    /// Most severe first.
    pub findings: Vec<AuditFinding>,
}

/// API roles: admin > operator > viewer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    Admin,
    Operator,
    Viewer,
}

impl RoleName {
    pub fn role(self) -> registry::Role {
        match self {
            RoleName::Admin => registry::Role::Admin,
            RoleName::Operator => registry::Role::Operator,
            RoleName::Viewer => registry::Role::Viewer,
        }
    }
}

/// A new API token.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateToken {
    pub role: RoleName,
    #[serde(default)]
    pub description: Option<String>,
}

/// An API token's metadata (never its secret).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub role: String,
    pub description: Option<String>,
    pub created_at: String,
    pub created_by: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl From<&TokenInfo> for Token {
    fn from(t: &TokenInfo) -> Self {
        Token {
            id: t.id.clone(),
            role: t.role.as_str().into(),
            description: t.description.clone(),
            created_at: rfc3339(t.created_at_ms),
            created_by: t.created_by.clone(),
            last_used_at: t.last_used_at_ms.map(rfc3339),
            revoked_at: t.revoked_at_ms.map(rfc3339),
        }
    }
}

/// A created token: `token` is shown this once.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: Token,
    pub token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<Token>,
    pub next_cursor: Option<String>,
}

/// `POST /api/v1/attestation/challenge`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChallengeRequest {
    pub device_id: String,
}

/// A challenge: the device signs (or puts in its token) exactly these 32 bytes.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChallengeIssued {
    pub device_id: String,
    /// 32 random bytes, hex (64 digits).
    pub nonce: String,
    /// After this the answer is refused (`expired_nonce`).
    pub expires_at: String,
}

/// `POST /api/v1/devices/{id}/attest`: the challenge sent to the connected device.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AttestSent {
    #[serde(flatten)]
    pub challenge: ChallengeIssued,
    /// The MQTT topic it was published on.
    pub topic: String,
}

/// `POST /api/v1/attestation/evidence`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EvidenceRequest {
    pub device_id: String,
    /// The challenge answered, hex.
    pub nonce: String,
    /// `se-signature`, `measurement` or `psa-token`.
    pub format: String,
    /// `se-signature`: the SE's ECDSA signature over the nonce, raw r‖s or DER, hex.
    #[serde(default)]
    pub signature_hex: Option<String>,
    /// `measurement` and `psa-token`: the COSE_Sign1, base64 (standard or URL-safe).
    #[serde(default)]
    pub token_b64: Option<String>,
}

/// The verdict on one answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EvidenceVerdict {
    pub device_id: String,
    pub format: String,
    /// `verified` or `failed`.
    pub result: String,
    /// The failed check: `unknown_nonce`, `replayed_nonce`, `expired_nonce`, `wrong_device`,
    /// `bad_signature`, `malformed_token`, `nonce_mismatch`, `missing_claim`, `invalid_claim`,
    /// `unknown_profile`, `lifecycle_not_allowed`, `firmware_unknown`, `firmware_blocked`,
    /// `signer_mismatch`, `version_mismatch`, …; null when verified.
    pub reason: Option<String>,
    /// The claim that failed, where one did (`nonce`, `security_lifecycle`, `measurement_value`, …).
    pub claim: Option<String>,
    pub message: Option<String>,
    /// The device's integrity after this answer: `unknown`, `verified`, `failed`, `stale`.
    pub integrity: String,
    /// The device's status after this answer (the CA's policy may quarantine or release it).
    pub status: String,
    pub firmware_name: Option<String>,
    pub firmware_version: Option<String>,
    pub firmware_digest: Option<String>,
}

/// One stored appraisal.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AttestationItem {
    pub at: String,
    pub format: String,
    pub result: String,
    pub reason: Option<String>,
    pub firmware_name: Option<String>,
    pub firmware_version: Option<String>,
    pub firmware_digest: Option<String>,
    /// What the evidence said (claims), when it verified.
    #[schema(value_type = Option<Object>)]
    pub claims: Option<serde_json::Value>,
}

/// `GET /api/v1/devices/{id}/attestation`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AttestationHistory {
    pub device_id: String,
    pub integrity: String,
    pub integrity_at: Option<String>,
    pub integrity_reason: Option<String>,
    /// Newest first (at most 50).
    pub items: Vec<AttestationItem>,
}

/// `allowed` or `blocked`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FirmwareStatus {
    #[default]
    Allowed,
    Blocked,
}

/// `POST /api/v1/firmware`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct NewFirmware {
    pub name: String,
    pub version: String,
    /// The measurement value: the image digest (SHA-256/384/512), hex.
    pub digest_hex: String,
    /// If set, evidence must also name this signer (hash of the image-signing key), hex.
    #[serde(default)]
    pub signer_id_hex: Option<String>,
    #[serde(default)]
    pub status: FirmwareStatus,
}

/// A firmware reference value.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Firmware {
    pub id: i64,
    pub name: String,
    pub version: String,
    pub digest_hex: String,
    pub signer_id_hex: Option<String>,
    pub status: FirmwareStatus,
    pub created_at: String,
    pub created_by: String,
    /// Devices whose last measurement is this digest.
    pub devices: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct FirmwareList {
    pub items: Vec<Firmware>,
    pub next_cursor: Option<String>,
}

/// A CA's attestation policy.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttestationPolicyBody {
    /// `quarantine` (default) or `flag`.
    #[serde(default)]
    pub on_failure: Option<String>,
    /// PSA lifecycle states accepted (default `["secured"]`): `secured`, `non_psa_rot_debug`,
    /// `recoverable_psa_rot_debug`, `psa_rot_provisioning`, `assembly_and_test`, `unknown`,
    /// `decommissioned`.
    #[serde(default)]
    pub allowed_lifecycles: Option<Vec<String>>,
    /// Verdicts older than this become `stale` (default 172800).
    #[serde(default)]
    pub freshness_secs: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AttestationPolicyView {
    pub ca_id: String,
    pub on_failure: String,
    pub allowed_lifecycles: Vec<String>,
    pub freshness_secs: u64,
}
