//! The join server: a join-request in, a join-accept out (or a refusal with the LoRaWAN Backend
//! Interfaces result code), root keys never leaving the registry's seal except for this.
//!
//! Order: the frame is read (unverified) only to find the device; the MIC decides
//! ([`verify_join_request`] with AppKey in 1.0.x, NwkKey in 1.1); then the DevNonce is spent (1.0:
//! never seen before; 1.1: above the last) and a JoinNonce taken, each by one atomic registry
//! statement; then the join-accept is built, the DevAddr allocated in the NetID's block, and the
//! session stored (sealed). A replayed join-request fails at the DevNonce, after the MIC.

use registry::{Registry, RegistryError};
use serde::Serialize;
use verifier::lorawan::{
    JoinAcceptParams, MacVersion, RootKeys, SessionKeys, accept_join, dev_addr_for, peek_join_request,
    verify_join_request,
};

/// What the join server puts in every join-accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinServerSettings {
    /// The network's NetID (most significant byte first); DevAddrs are allocated in its block.
    pub net_id: [u8; 3],
    pub rx1_dr_offset: u8,
    pub rx2_dr: u8,
    /// RX1 delay in seconds (0 means 1).
    pub rx_delay: u8,
}

impl Default for JoinServerSettings {
    fn default() -> Self {
        JoinServerSettings {
            net_id: [0, 0, 0],
            rx1_dr_offset: 0,
            rx2_dr: 0,
            rx_delay: 1,
        }
    }
}

/// Why a join was refused, as LoRaWAN Backend Interfaces (TS002) result codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    #[error("not a join-request: {0}")]
    Malformed(String),
    #[error("unknown DevEUI {0}")]
    UnknownDevEui(String),
    #[error("device {0} is provisioned for ABP; it does not join")]
    NotOtaa(String),
    #[error("the join-request MIC does not verify with the device's root key")]
    MicFailed,
    #[error("the network server says LoRaWAN {claimed}; the device is provisioned for {provisioned}")]
    MacVersionMismatch { claimed: String, provisioned: String },
    #[error("DevNonce {dev_nonce} was already used (replayed join-request)")]
    DevNonceReused { dev_nonce: u16 },
    #[error("the registry is unavailable: {0}")]
    Unavailable(String),
}

impl JoinRefusal {
    /// The TS002 `Result.ResultCode`.
    pub fn result_code(&self) -> &'static str {
        match self {
            JoinRefusal::Malformed(_) => "MalformedRequest",
            JoinRefusal::UnknownDevEui(_) => "UnknownDevEUI",
            JoinRefusal::NotOtaa(_) => "ActivationDisallowed",
            JoinRefusal::MicFailed => "MICFailed",
            JoinRefusal::MacVersionMismatch { .. } => "JoinReqFailed",
            JoinRefusal::DevNonceReused { .. } => "JoinReqFailed",
            JoinRefusal::Unavailable(_) => "Other",
        }
    }

    /// A stable check name for events and counters.
    pub fn check(&self) -> &'static str {
        match self {
            JoinRefusal::Malformed(_) => "malformed",
            JoinRefusal::UnknownDevEui(_) => "unknown_dev_eui",
            JoinRefusal::NotOtaa(_) => "not_otaa",
            JoinRefusal::MicFailed => "mic_mismatch",
            JoinRefusal::MacVersionMismatch { .. } => "mac_version_mismatch",
            JoinRefusal::DevNonceReused { .. } => "dev_nonce_reused",
            JoinRefusal::Unavailable(_) => "registry_unavailable",
        }
    }
}

impl From<RegistryError> for JoinRefusal {
    fn from(e: RegistryError) -> Self {
        JoinRefusal::Unavailable(e.to_string())
    }
}

/// What a network server decides and passes in a Backend Interfaces JoinReq (TS002 §6.1): the
/// join server then uses these instead of its own defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkServerChoices {
    pub dev_addr: Option<[u8; 4]>,
    /// The DLSettings byte (OptNeg | RX1DROffset | RX2DataRate).
    pub dl_settings: Option<u8>,
    pub rx_delay: Option<u8>,
    pub cflist: Option<[u8; 16]>,
    /// The MAC version the network server runs the device with (`MACVersion`): 1.0.x and 1.1
    /// derive different keys, so it must agree with the provisioned one.
    pub mac_version: Option<MacVersion>,
}

/// An accepted join.
#[derive(Clone, Debug, Serialize)]
pub struct JoinAccepted {
    pub dev_eui: String,
    /// DevAddr, hex, most significant byte first.
    pub dev_addr: String,
    pub join_nonce: u32,
    pub mac_version: &'static str,
    /// The encrypted join-accept PHYPayload, for the gateway (or the network server) to send.
    #[serde(skip)]
    pub phy_payload: Vec<u8>,
    #[serde(skip)]
    pub session: SessionKeys,
}

/// The join server's answer to one join-request PHYPayload. `random` supplies the DevAddr bits.
pub async fn join(
    registry: &Registry,
    settings: &JoinServerSettings,
    phy: &[u8],
    random: [u8; 4],
    now_ms: i64,
) -> Result<JoinAccepted, JoinRefusal> {
    join_with(
        registry,
        settings,
        &NetworkServerChoices::default(),
        phy,
        random,
        now_ms,
    )
    .await
}

/// [`join`], with the network server's choices (DevAddr, DLSettings, RxDelay, CFList).
pub async fn join_with(
    registry: &Registry,
    settings: &JoinServerSettings,
    ns: &NetworkServerChoices,
    phy: &[u8],
    random: [u8; 4],
    now_ms: i64,
) -> Result<JoinAccepted, JoinRefusal> {
    let peeked = peek_join_request(phy).map_err(|e| JoinRefusal::Malformed(e.to_string()))?;
    let dev_eui = peeked.dev_eui.to_ascii_uppercase();
    let device = match registry.lorawan_device(&dev_eui).await {
        Ok(d) => d,
        Err(RegistryError::NotFound { .. }) => return Err(JoinRefusal::UnknownDevEui(dev_eui)),
        Err(e) => return Err(e.into()),
    };
    if device.activation != "otaa" {
        return Err(JoinRefusal::NotOtaa(dev_eui));
    }
    let version = MacVersion::parse(&device.mac_version)
        .ok_or_else(|| JoinRefusal::Unavailable(format!("stored MAC version `{}`", device.mac_version)))?;
    if let Some(claimed) = ns.mac_version
        && claimed.is_1_1() != version.is_1_1()
    {
        return Err(JoinRefusal::MacVersionMismatch {
            claimed: claimed.as_str().into(),
            provisioned: version.as_str().into(),
        });
    }
    let sealed = registry.lorawan_root_keys(&dev_eui).await?;
    let key16 = |k: &[u8]| -> Result<[u8; 16], JoinRefusal> {
        k.try_into()
            .map_err(|_| JoinRefusal::Unavailable("stored root key is not 16 bytes".into()))
    };
    let root = RootKeys {
        app_key: key16(&sealed.app_key)?,
        nwk_key: sealed.nwk_key.as_ref().map(|k| key16(k)).transpose()?,
    };
    // 1.1 join-requests are MIC'd with NwkKey, 1.0.x with AppKey.
    let mic_key = match (version.is_1_1(), root.nwk_key) {
        (true, Some(k)) => k,
        (true, None) => return Err(JoinRefusal::Unavailable("LoRaWAN 1.1 device without a NwkKey".into())),
        (false, _) => root.app_key,
    };
    let request = verify_join_request(phy, &mic_key).map_err(|e| match e.check() {
        "mic_mismatch" => JoinRefusal::MicFailed,
        _ => JoinRefusal::Malformed(e.to_string()),
    })?;
    let fresh = if version.is_1_1() {
        registry.advance_dev_nonce(&dev_eui, request.dev_nonce, now_ms).await?
    } else {
        registry.record_dev_nonce(&dev_eui, request.dev_nonce, now_ms).await?
    };
    if !fresh {
        return Err(JoinRefusal::DevNonceReused {
            dev_nonce: request.dev_nonce,
        });
    }
    let join_nonce = registry.next_join_nonce(&dev_eui, now_ms).await?;
    // A DevAddr in our NetID's block; another device holding it is a (rare) collision: perturb.
    let mut random = random;
    let (rx1_dr_offset, rx2_dr) = match ns.dl_settings {
        Some(b) => ((b >> 4) & 0x07, b & 0x0f),
        None => (settings.rx1_dr_offset, settings.rx2_dr),
    };
    let attempts = if ns.dev_addr.is_some() { 1 } else { 8u8 };
    for attempt in 0..attempts {
        let dev_addr = ns.dev_addr.unwrap_or_else(|| dev_addr_for(settings.net_id, random));
        let accept = accept_join(
            version,
            &root,
            &request,
            &JoinAcceptParams {
                join_nonce,
                net_id: settings.net_id,
                dev_addr,
                rx1_dr_offset,
                rx2_dr,
                rx_delay: ns.rx_delay.unwrap_or(settings.rx_delay),
                cflist: ns.cflist,
            },
        )
        .map_err(|e| JoinRefusal::Malformed(e.to_string()))?;
        let k = &accept.session;
        let blob = super::session_blob(&k.f_nwk_s_int_key, &k.s_nwk_s_int_key, &k.nwk_s_enc_key, &k.app_s_key);
        match registry
            .set_lorawan_session(&dev_eui, &hex::encode(dev_addr), &*blob, now_ms)
            .await
        {
            Ok(()) => {
                return Ok(JoinAccepted {
                    dev_eui,
                    dev_addr: hex::encode_upper(dev_addr),
                    join_nonce,
                    mac_version: version.as_str(),
                    phy_payload: accept.phy_payload,
                    session: accept.session,
                });
            }
            Err(RegistryError::Conflict { .. }) => {
                random[3] = random[3].wrapping_add(attempt.wrapping_mul(31).wrapping_add(1));
                random[2] ^= 0x5a;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(JoinRefusal::Unavailable(
        "no free DevAddr found in the NetID block".into(),
    ))
}
