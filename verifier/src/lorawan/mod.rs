//! LoRaWAN authenticity rules (1.0.x and 1.1), pure: frame parsing, MIC verification in constant
//! time, FRMPayload decryption, 32-bit frame counters from the 16 bits on air, and the replay
//! rules for frame counters and DevNonces. Framing and the AES-CMAC arithmetic are ChirpStack's
//! `lrwn` crate; every comparison and every verdict is ours.
//!
//! The MIC is the only authenticity anchor of a LoRaWAN frame (gateways are unauthenticated):
//! a frame is trusted only after [`verify_join_request`] or [`verify_uplink`] returned `Ok`.

use lrwn::{AES128Key, FType, MACVersion, Payload, PhyPayload};
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
    PhyPayload::from_slice(phy).map_err(malformed)
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

/// The keys an uplink MIC is checked with.
#[derive(Clone, Copy, Debug)]
pub enum UplinkMicKeys<'k> {
    /// LoRaWAN 1.0.x: NwkSKey.
    V1_0 { nwk_s_key: &'k [u8; 16] },
    /// LoRaWAN 1.1: FNwkSIntKey and SNwkSIntKey, with the transmission parameters in B1.
    V1_1 {
        f_nwk_s_int_key: &'k [u8; 16],
        s_nwk_s_int_key: &'k [u8; 16],
        /// The FCnt of the confirmed downlink being acknowledged (used only when ACK is set).
        conf_fcnt: u32,
        tx_dr: u8,
        tx_ch: u8,
    },
}

/// A data uplink whose MIC verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Uplink {
    /// DevAddr, hex, most significant byte first.
    pub dev_addr: String,
    /// The full 32-bit frame counter the MIC verified with.
    pub fcnt: u32,
    pub confirmed: bool,
    pub ack: bool,
    pub f_port: Option<u8>,
    /// FRMPayload as sent (encrypted).
    pub frm_payload: Vec<u8>,
}

/// Verifies a data uplink's MIC, with the 32-bit frame counter reconstructed by the caller
/// ([`reconstruct_fcnt`]) from the 16 bits on air.
pub fn verify_uplink(phy: &[u8], fcnt32: u32, keys: UplinkMicKeys<'_>) -> Result<Uplink, LorawanError> {
    let frame = parse(phy)?;
    let m_type = frame.mhdr.f_type;
    let confirmed = match m_type {
        FType::UnconfirmedDataUp => false,
        FType::ConfirmedDataUp => true,
        other => {
            return Err(LorawanError::WrongMessageType {
                expected: "data uplink",
                got: m_type_name(other),
            });
        }
    };
    let Payload::MACPayload(mac) = &frame.payload else {
        return Err(malformed("data uplink without a MAC payload"));
    };
    if (mac.fhdr.f_cnt & 0xffff) != (fcnt32 & 0xffff) {
        return Err(malformed(format!(
            "frame counter {fcnt32} does not end in the transmitted 16 bits {}",
            mac.fhdr.f_cnt & 0xffff
        )));
    }
    let mut expected = frame.clone();
    if let Payload::MACPayload(m) = &mut expected.payload {
        m.fhdr.f_cnt = fcnt32;
    }
    let result = match keys {
        UplinkMicKeys::V1_0 { nwk_s_key } => {
            let k = AES128Key::from_bytes(*nwk_s_key);
            expected.set_uplink_data_mic(MACVersion::LoRaWAN1_0, 0, 0, 0, &k, &k)
        }
        UplinkMicKeys::V1_1 {
            f_nwk_s_int_key,
            s_nwk_s_int_key,
            conf_fcnt,
            tx_dr,
            tx_ch,
        } => expected.set_uplink_data_mic(
            MACVersion::LoRaWAN1_1,
            conf_fcnt,
            tx_dr,
            tx_ch,
            &AES128Key::from_bytes(*f_nwk_s_int_key),
            &AES128Key::from_bytes(*s_nwk_s_int_key),
        ),
    };
    result.map_err(malformed)?;
    if !mic_eq(frame.mic, expected.mic) {
        return Err(LorawanError::MicMismatch);
    }
    let frm_payload = match &mac.frm_payload {
        Some(lrwn::FRMPayload::Raw(b)) => b.clone(),
        Some(_) => return Err(malformed("unexpected decoded FRMPayload")),
        None => Vec::new(),
    };
    Ok(Uplink {
        dev_addr: mac.fhdr.devaddr.to_string(),
        fcnt: fcnt32,
        confirmed,
        ack: mac.fhdr.f_ctrl.ack,
        f_port: mac.f_port,
        frm_payload,
    })
}

/// Decrypts (or encrypts: the operation is its own inverse) an uplink's FRMPayload with
/// AppSKey (FPort > 0) or NwkSKey/NwkSEncKey (FPort 0).
pub fn decrypt_uplink_payload(key: &[u8; 16], uplink: &Uplink) -> Result<Vec<u8>, LorawanError> {
    let dev_addr_bytes = hex::decode(&uplink.dev_addr).map_err(malformed)?;
    let dev_addr = lrwn::DevAddr::from_slice(&dev_addr_bytes).map_err(malformed)?;
    lrwn::encrypt_frm_payload(
        &AES128Key::from_bytes(*key),
        true,
        &dev_addr,
        uplink.fcnt,
        &uplink.frm_payload,
    )
    .map_err(malformed)
}

/// The 32-bit frame counter for the 16 bits on air, given the last accepted counter: the
/// smallest value above `last` that ends in those bits (a frame after 65,536 lost ones is not
/// told apart from a replay: the gap rule catches both).
pub fn reconstruct_fcnt(last: Option<u32>, wire: u16) -> u32 {
    let Some(last) = last else {
        return u32::from(wire);
    };
    let candidate = (last & 0xffff_0000) | u32::from(wire);
    if candidate > last {
        candidate
    } else {
        candidate.wrapping_add(0x1_0000)
    }
}

/// The frame-counter rule: strictly above the last accepted one, by at most `max_gap`.
pub fn check_fcnt(last: Option<u32>, got: u32, max_gap: u32) -> Result<(), LorawanError> {
    let Some(last) = last else {
        return Ok(());
    };
    if got <= last {
        return Err(LorawanError::FCntReplay { last, got });
    }
    let gap = got - last;
    if gap > max_gap {
        return Err(LorawanError::FCntGap {
            last,
            got,
            gap,
            max_gap,
        });
    }
    Ok(())
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
