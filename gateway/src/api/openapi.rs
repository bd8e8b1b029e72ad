//! The OpenAPI 3 document, derived from the handlers' annotations and the model types.

use super::{attestation, cas, commands, devices, events, fleet, lorawan, model, sigfox, tokens};
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fleetward operator API",
        description = "Provisioning CAs, devices, attestation and firmware reference values, the audit trail, fleet \
                       summary and audit findings. \
                       Authenticate with `Authorization: Bearer <token>`; roles: admin > operator > viewer.",
        license(name = "Apache-2.0")
    ),
    paths(
        cas::registration_code, cas::register, cas::list, cas::get_one, cas::revoke, cas::upload_crl,
        devices::list, devices::get_one, devices::activate, devices::quarantine, devices::revoke, devices::put_labels,
        commands::queue, commands::pending,
        events::list, events::stream,
        fleet::summary, fleet::audit,
        tokens::create, tokens::list, tokens::revoke,
        attestation::challenge, attestation::evidence, attestation::attest, attestation::history,
        attestation::add_firmware, attestation::list_firmware, attestation::get_policy, attestation::put_policy,
        lorawan::add, lorawan::list, lorawan::get_one, lorawan::uplinks,
        sigfox::add, sigfox::list, sigfox::get_one, sigfox::uplinks, sigfox::frame,
        sigfox::queue_downlink, sigfox::downlinks,
    ),
    components(schemas(
        model::ErrorBody, model::RegistrationCode, model::RegisterCa, model::Ca, model::CaList, model::Reason,
        model::CaRevoked, model::CrlUpload, model::CrlAccepted, model::Device, model::DeviceCertificate,
        model::DeviceList, model::DeviceDetail, model::ChainLink, model::Labels, model::EventItem, model::EventList,
        model::Bucket, model::FleetSummary, model::AuditFinding, model::Audit, model::CreateToken, model::Token,
        model::CreatedToken, model::TokenList, model::ChallengeRequest, model::ChallengeIssued, model::AttestSent,
        model::EvidenceRequest, model::EvidenceVerdict, model::AttestationItem, model::AttestationHistory,
        model::FirmwareStatus, model::NewFirmware, model::Firmware, model::FirmwareList, model::AttestationPolicyBody,
        model::AttestationPolicyView, lorawan::NewLorawan, lorawan::LorawanDevice, lorawan::LorawanDeviceList,
        lorawan::LorawanUplinkItem, lorawan::LorawanUplinkList, sigfox::NewSigfoxDevice, sigfox::SigfoxDevice,
        sigfox::SigfoxDeviceList, sigfox::SigfoxUplinkItem, sigfox::SigfoxUplinkList, sigfox::FrameSubmission,
        sigfox::FrameVerdict, sigfox::NewSigfoxDownlink, sigfox::SigfoxDownlinkItem, sigfox::SigfoxDownlinkList,
        commands::NewCommand, commands::Command, commands::CommandList,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "cas", description = "Provisioning CAs"),
        (name = "devices", description = "Devices"),
        (name = "events", description = "The audit trail"),
        (name = "fleet", description = "Fleet summary"),
        (name = "audit", description = "Fleet audit findings"),
        (name = "tokens", description = "API tokens"),
        (name = "attestation", description = "Challenges, evidence and appraisal; CA attestation policies"),
        (name = "firmware", description = "Firmware reference values"),
        (name = "lorawan", description = "LoRaWAN key custody and uplinks"),
        (name = "sigfox", description = "Sigfox key custody, raw-frame verification, uplinks and callback downlinks"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /api/openapi.json` (public: the contract is not a secret).
pub(super) async fn document() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}
