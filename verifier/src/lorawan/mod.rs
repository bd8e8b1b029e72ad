//! LoRaWAN authenticity rules (1.0.x and 1.1), pure: frame parsing, MIC verification in constant
//! time, FRMPayload decryption, 32-bit frame counters from the 16 bits on air, and the replay
//! rules for frame counters and DevNonces. Framing and the AES-CMAC arithmetic are ChirpStack's
//! `lrwn` crate; every comparison and every verdict is ours.
//!
//! The MIC is the only authenticity anchor of a LoRaWAN frame (gateways are unauthenticated):
//! a frame is trusted only after [`verify_join_request`] or [`verify_uplink`] returned `Ok`.

mod region;
mod uplink;

pub use region::{EU868_CHANNELS, channel_index, eu868_data_rate};

pub use uplink::*;

use lrwn::{AES128Key, FType, Payload, PhyPayload};
use serde::Serialize;
use subtle::ConstantTimeEq;

/// Largest PHYPayload accepted (the largest LoRaWAN frame is 255 bytes).
pub const MAX_PHY_PAYLOAD: usize = 255;

/// Why a frame or counter was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "check", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LorawanError {
    #[error("PHYPayload is not a well-formed LoRaWAN frame: {detail}")]
    Malformed { detail: String },
    #[error("expected a {expected} frame, got {got}")]
    WrongMessageType { expected: &'static str, got: String },
    #[error("MIC does not verify with the device's key")]
    MicMismatch,
    #[error("frame counter {got} is not above the last accepted {last} (replay)")]
    FCntReplay { last: u32, got: u32 },
    #[error("frame counter {got} jumps {gap} past the last accepted {last} (more than {max_gap})")]
    FCntGap {
        last: u32,
        got: u32,
        gap: u32,
        max_gap: u32,
    },
    #[error("DevNonce {dev_nonce} was already used (replayed join-request)")]
    DevNonceReused { dev_nonce: u16 },
    #[error("DevNonce {got} is not above the last {last} (LoRaWAN 1.1 requires it to increase)")]
    DevNonceNotIncreasing { last: u16, got: u16 },
    #[error("JoinNonce {next} is not above the last {last}")]
    JoinNonceNotIncreasing { last: u32, next: u32 },
}

impl LorawanError {
    /// A stable name for the failed check.
    pub fn check(&self) -> &'static str {
        match self {
            LorawanError::Malformed { .. } => "malformed",
            LorawanError::WrongMessageType { .. } => "wrong_message_type",
            LorawanError::MicMismatch => "mic_mismatch",
            LorawanError::FCntReplay { .. } => "fcnt_replay",
            LorawanError::FCntGap { .. } => "fcnt_gap",
            LorawanError::DevNonceReused { .. } => "dev_nonce_reused",
            LorawanError::DevNonceNotIncreasing { .. } => "dev_nonce_not_increasing",
            LorawanError::JoinNonceNotIncreasing { .. } => "join_nonce_not_increasing",
        }
    }
}

fn malformed(e: impl std::fmt::Display) -> LorawanError {
    LorawanError::Malformed { detail: e.to_string() }
}

/// Parses a PHYPayload (no trust implied).
pub fn parse(phy: &[u8]) -> Result<PhyPayload, LorawanError> {
    if phy.len() > MAX_PHY_PAYLOAD {
        return Err(malformed(format!(
            "{} bytes; a LoRaWAN frame is at most {MAX_PHY_PAYLOAD}",
            phy.len()
        )));
    }
    let frame = PhyPayload::from_slice(phy).map_err(malformed)?;
    // lrwn computes MICs over the fields it parsed, re-encoded, not over the bytes received:
    // a frame whose encoding is not canonical (RFU bits set in MHDR, say) would otherwise pass
    // the MIC of its canonical twin with bytes the MIC never covered (found by fuzzing).
    if frame.to_vec().map_err(malformed)? != phy {
        return Err(malformed(
            "not in canonical form (RFU bits or reserved values set): the MIC would not cover every byte",
        ));
    }
    Ok(frame)
}

fn mic_eq(a: Option<[u8; 4]>, b: Option<[u8; 4]>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.ct_eq(&b).into(),
        _ => false,
    }
}

fn m_type_name(m: FType) -> String {
    format!("{m:?}")
}

/// A join-request whose MIC verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JoinRequest {
    /// JoinEUI (AppEUI in 1.0), hex, most significant byte first.
    pub join_eui: String,
    pub dev_eui: String,
    pub dev_nonce: u16,
}

/// Verifies a join-request's MIC with the root key (AppKey in 1.0.x, NwkKey in 1.1).
pub fn verify_join_request(phy: &[u8], root_key: &[u8; 16]) -> Result<JoinRequest, LorawanError> {
    let frame = parse(phy)?;
    let Payload::JoinRequest(jr) = &frame.payload else {
        return Err(LorawanError::WrongMessageType {
            expected: "join-request",
            got: m_type_name(frame.mhdr.f_type),
        });
    };
    let mut expected = frame.clone();
    expected
        .set_join_request_mic(&AES128Key::from_bytes(*root_key))
        .map_err(malformed)?;
    if !mic_eq(frame.mic, expected.mic) {
        return Err(LorawanError::MicMismatch);
    }
    Ok(JoinRequest {
        join_eui: jr.join_eui.to_string(),
        dev_eui: jr.dev_eui.to_string(),
        dev_nonce: jr.dev_nonce,
    })
}

/// The LoRaWAN MAC versions fleetward serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum MacVersion {
    #[serde(rename = "1.0.2")]
    V1_0_2,
    #[serde(rename = "1.0.3")]
    V1_0_3,
    #[serde(rename = "1.0.4")]
    V1_0_4,
    #[serde(rename = "1.1")]
    V1_1,
}

impl MacVersion {
    pub const ALL: [MacVersion; 4] = [
        MacVersion::V1_0_2,
        MacVersion::V1_0_3,
        MacVersion::V1_0_4,
        MacVersion::V1_1,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MacVersion::V1_0_2 => "1.0.2",
            MacVersion::V1_0_3 => "1.0.3",
            MacVersion::V1_0_4 => "1.0.4",
            MacVersion::V1_1 => "1.1",
        }
    }

    /// `1.0.2`, `1.0.3`, `1.0.4`, `1.1` (also `1.1.0`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "1.1.0" => Some(MacVersion::V1_1),
            _ => Self::ALL.into_iter().find(|v| v.as_str() == s),
        }
    }

    pub fn is_1_1(self) -> bool {
        self == MacVersion::V1_1
    }
}

/// A device's root keys. LoRaWAN 1.0.x has one (AppKey); 1.1 has AppKey and NwkKey.
#[derive(Clone)]
pub struct RootKeys {
    pub app_key: [u8; 16],
    /// LoRaWAN 1.1 only.
    pub nwk_key: Option<[u8; 16]>,
}

impl std::fmt::Debug for RootKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKeys(…)")
    }
}

/// Session keys from a join. In LoRaWAN 1.0.x the three network keys are all NwkSKey.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    pub f_nwk_s_int_key: [u8; 16],
    pub s_nwk_s_int_key: [u8; 16],
    pub nwk_s_enc_key: [u8; 16],
    pub app_s_key: [u8; 16],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(…)")
    }
}

/// What the join server puts in a join-accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinAcceptParams {
    /// 24 bits; must increase per join server (see [`check_join_nonce`]).
    pub join_nonce: u32,
    /// NetID, most significant byte first.
    pub net_id: [u8; 3],
    /// DevAddr, most significant byte first.
    pub dev_addr: [u8; 4],
    pub rx1_dr_offset: u8,
    pub rx2_dr: u8,
    pub rx_delay: u8,
    pub cflist: Option<[u8; 16]>,
}

/// A join-accept, encrypted and MIC'd, and the session keys it gives the device.
#[derive(Clone, Debug)]
pub struct JoinAccept {
    pub phy_payload: Vec<u8>,
    pub session: SessionKeys,
    /// LoRaWAN 1.1: the join-server keys (JSIntKey, JSEncKey), for rejoins.
    pub js_int_key: Option<[u8; 16]>,
    pub js_enc_key: Option<[u8; 16]>,
}

/// A derived key's bytes (lrwn reports errors as `anyhow::Error`; we only display them).
fn derive<E: std::fmt::Display>(r: Result<AES128Key, E>) -> Result<[u8; 16], LorawanError> {
    r.map(|k| k.to_bytes()).map_err(malformed)
}

fn eui(hex_str: &str) -> Result<lrwn::EUI64, LorawanError> {
    hex_str.parse::<lrwn::EUI64>().map_err(malformed)
}

/// Builds the join-accept for a verified join-request and derives the session keys.
///
/// - 1.0.x: keys from AppKey (NwkSKey = aes(AppKey, 0x01‖JoinNonce‖NetID‖DevNonce), AppSKey 0x02);
///   MIC and encryption with AppKey.
/// - 1.1 (OptNeg set): network keys from NwkKey (0x01 FNwkSIntKey, 0x03 SNwkSIntKey, 0x04
///   NwkSEncKey over JoinNonce‖JoinEUI‖DevNonce), AppSKey from AppKey (0x02); the MIC with
///   JSIntKey over JoinReqType‖JoinEUI‖DevNonce‖MHDR‖…; encryption with NwkKey.
pub fn accept_join(
    version: MacVersion,
    root: &RootKeys,
    request: &JoinRequest,
    p: &JoinAcceptParams,
) -> Result<JoinAccept, LorawanError> {
    if p.join_nonce > 0x00ff_ffff {
        return Err(malformed("JoinNonce is 24 bits"));
    }
    if p.rx1_dr_offset > 7 || p.rx2_dr > 15 || p.rx_delay > 15 {
        return Err(malformed("DLSettings or RxDelay out of range"));
    }
    let join_eui = eui(&request.join_eui)?;
    let dev_eui = eui(&request.dev_eui)?;
    let net_id = lrwn::NetID::from_be_bytes(p.net_id);
    let opt_neg = version.is_1_1();
    let app_key = AES128Key::from_bytes(root.app_key);
    let nwk_key = match (opt_neg, root.nwk_key) {
        (true, Some(k)) => AES128Key::from_bytes(k),
        (true, None) => return Err(malformed("LoRaWAN 1.1 needs a NwkKey")),
        (false, _) => app_key,
    };
    let (jn, dn) = (p.join_nonce, request.dev_nonce);
    let f_nwk = derive(lrwn::keys::get_f_nwk_s_int_key(
        opt_neg, &nwk_key, &net_id, &join_eui, jn, dn,
    ))?;
    let session = if opt_neg {
        SessionKeys {
            f_nwk_s_int_key: f_nwk,
            s_nwk_s_int_key: derive(lrwn::keys::get_s_nwk_s_int_key(
                true, &nwk_key, &net_id, &join_eui, jn, dn,
            ))?,
            nwk_s_enc_key: derive(lrwn::keys::get_nwk_s_enc_key(
                true, &nwk_key, &net_id, &join_eui, jn, dn,
            ))?,
            app_s_key: derive(lrwn::keys::get_app_s_key(true, &app_key, &net_id, &join_eui, jn, dn))?,
        }
    } else {
        SessionKeys {
            f_nwk_s_int_key: f_nwk,
            s_nwk_s_int_key: f_nwk,
            nwk_s_enc_key: f_nwk,
            app_s_key: derive(lrwn::keys::get_app_s_key(false, &app_key, &net_id, &join_eui, jn, dn))?,
        }
    };
    let (js_int, js_enc) = if opt_neg {
        (
            Some(derive(lrwn::keys::get_js_int_key(&dev_eui, &nwk_key))?),
            Some(derive(lrwn::keys::get_js_enc_key(&dev_eui, &nwk_key))?),
        )
    } else {
        (None, None)
    };
    let cflist = match p.cflist {
        Some(b) => Some(lrwn::CFList::from_bytes(b).map_err(malformed)?),
        None => None,
    };
    let mut phy = PhyPayload {
        mhdr: lrwn::MHDR {
            f_type: FType::JoinAccept,
            major: lrwn::Major::LoRaWANR1,
        },
        payload: Payload::JoinAccept(lrwn::JoinAcceptPayload {
            join_nonce: p.join_nonce,
            home_netid: net_id,
            devaddr: lrwn::DevAddr::from_be_bytes(p.dev_addr),
            dl_settings: lrwn::DLSettings {
                opt_neg,
                rx2_dr: p.rx2_dr,
                rx1_dr_offset: p.rx1_dr_offset,
            },
            rx_delay: p.rx_delay,
            cflist,
        }),
        mic: None,
    };
    let mic_key = match js_int {
        Some(k) => AES128Key::from_bytes(k),
        None => app_key,
    };
    phy.set_join_accept_mic(lrwn::JoinType::Join, &join_eui, request.dev_nonce, &mic_key)
        .map_err(malformed)?;
    phy.encrypt_join_accept_payload(&nwk_key).map_err(malformed)?;
    Ok(JoinAccept {
        phy_payload: phy.to_vec().map_err(malformed)?,
        session,
        js_int_key: js_int,
        js_enc_key: js_enc,
    })
}

/// JoinNonce must increase for every join-accept a join server sends a device.
pub fn check_join_nonce(last: Option<u32>, next: u32) -> Result<(), LorawanError> {
    match last {
        Some(last) if next <= last => Err(LorawanError::JoinNonceNotIncreasing { last, next }),
        _ if next > 0x00ff_ffff => Err(malformed("JoinNonce is 24 bits and exhausted")),
        _ => Ok(()),
    }
}

/// The fields of a join-request **before** its MIC is checked: only to find the device's keys.
/// Nothing in it is trusted until [`verify_join_request`] passes.
pub fn peek_join_request(phy: &[u8]) -> Result<JoinRequest, LorawanError> {
    let frame = parse(phy)?;
    match &frame.payload {
        Payload::JoinRequest(jr) => Ok(JoinRequest {
            join_eui: jr.join_eui.to_string(),
            dev_eui: jr.dev_eui.to_string(),
            dev_nonce: jr.dev_nonce,
        }),
        _ => Err(LorawanError::WrongMessageType {
            expected: "join-request",
            got: m_type_name(frame.mhdr.f_type),
        }),
    }
}

/// A DevAddr inside `net_id`'s address block (the NetID type's prefix and NwkID), the rest from
/// the caller's randomness.
pub fn dev_addr_for(net_id: [u8; 3], random: [u8; 4]) -> [u8; 4] {
    let mut addr = lrwn::DevAddr::from_be_bytes(random);
    addr.set_dev_addr_prefix(lrwn::NetID::from_be_bytes(net_id).dev_addr_prefix());
    addr.to_be_bytes()
}

/// LoRaWAN 1.0.x: a DevNonce may never repeat (the join server keeps the history).
pub fn check_dev_nonce_1_0(used: &[u16], got: u16) -> Result<(), LorawanError> {
    if used.contains(&got) {
        return Err(LorawanError::DevNonceReused { dev_nonce: got });
    }
    Ok(())
}

/// LoRaWAN 1.1: DevNonce is a counter and must strictly increase.
pub fn check_dev_nonce_1_1(last: Option<u16>, got: u16) -> Result<(), LorawanError> {
    match last {
        Some(last) if got <= last => Err(LorawanError::DevNonceNotIncreasing { last, got }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcnt_reconstruction() {
        assert_eq!(reconstruct_fcnt(None, 7), 7);
        assert_eq!(reconstruct_fcnt(Some(5), 6), 6);
        assert_eq!(reconstruct_fcnt(Some(0xffff), 0), 0x1_0000);
        assert_eq!(reconstruct_fcnt(Some(0x1_fffe), 0x0003), 0x2_0003);
        // The same 16 bits again: the next epoch, which the gap rule then refuses.
        assert_eq!(reconstruct_fcnt(Some(10), 10), 0x1_000a);
        assert_eq!(check_fcnt(Some(10), 0x1_000a, 16_384).unwrap_err().check(), "fcnt_gap");
        assert_eq!(check_fcnt(Some(10), 10, 16_384).unwrap_err().check(), "fcnt_replay");
        assert!(check_fcnt(Some(10), 11, 16_384).is_ok());
        assert!(check_fcnt(None, 0, 16_384).is_ok());
    }

    #[test]
    fn dev_addr_stays_in_the_net_id_block() {
        // NetID type 0, NwkID 0x13: DevAddr = 0b0 | 0b010011 | 25 random bits.
        for random in [[0u8; 4], [0xff; 4], [0x12, 0x34, 0x56, 0x78]] {
            let a = dev_addr_for([0x00, 0x00, 0x13], random);
            assert_eq!(a[0] >> 1, 0x13, "{a:02x?}");
        }
        assert_ne!(
            dev_addr_for([0, 0, 0x13], [0; 4]),
            dev_addr_for([0, 0, 0x13], [0, 0, 0, 1])
        );
    }

    #[test]
    fn dev_nonce_rules() {
        assert_eq!(
            check_dev_nonce_1_0(&[1, 2, 3], 2).unwrap_err().check(),
            "dev_nonce_reused"
        );
        assert!(check_dev_nonce_1_0(&[1, 2, 3], 4).is_ok());
        assert_eq!(
            check_dev_nonce_1_1(Some(9), 9).unwrap_err().check(),
            "dev_nonce_not_increasing"
        );
        assert!(check_dev_nonce_1_1(Some(9), 10).is_ok());
        assert!(check_dev_nonce_1_1(None, 0).is_ok());
    }
}
