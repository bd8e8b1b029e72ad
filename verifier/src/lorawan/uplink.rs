//! Data uplinks: the header read before any key is chosen ([`peek_uplink`]), the MIC
//! ([`verify_uplink`], 1.0.x and 1.1), FRMPayload and FOpts decryption, and the frame-counter
//! rules (32-bit reconstruction from the 16 bits on air, strictly increasing within a gap).

use super::{LorawanError, m_type_name, malformed, mic_eq, parse};
use lrwn::{AES128Key, FType, MACVersion, Payload};
use serde::Serialize;

/// What a data uplink's first bytes say, read **before** its MIC is checked: only to find the
/// session (DevAddr) and the counter to verify with. Nothing here is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UplinkHeader {
    /// DevAddr, most significant byte first.
    pub dev_addr: [u8; 4],
    /// The 16 counter bits on air.
    pub fcnt16: u16,
    pub confirmed: bool,
}

/// Reads a data uplink's DevAddr and 16-bit FCnt without parsing the frame. Anything that is not
/// a data uplink (by MType) or is too short to be one is refused; the full checks come in
/// [`verify_uplink`].
pub fn peek_uplink(phy: &[u8]) -> Result<UplinkHeader, LorawanError> {
    // MHDR(1) DevAddr(4) FCtrl(1) FCnt(2) MIC(4)
    const SHORTEST: usize = 12;
    let Some(&mhdr) = phy.first() else {
        return Err(malformed("empty PHYPayload"));
    };
    let confirmed = match mhdr >> 5 {
        0b010 => false,
        0b100 => true,
        other => {
            return Err(LorawanError::WrongMessageType {
                expected: "data uplink",
                got: format!("MType {other:#05b}"),
            });
        }
    };
    if phy.len() < SHORTEST || phy.len() > super::MAX_PHY_PAYLOAD {
        return Err(malformed(format!("{} bytes is no data uplink", phy.len())));
    }
    Ok(UplinkHeader {
        dev_addr: [phy[4], phy[3], phy[2], phy[1]],
        fcnt16: u16::from_le_bytes([phy[6], phy[7]]),
        confirmed,
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
    /// FOpts as sent (MAC commands; encrypted with NwkSEncKey in LoRaWAN 1.1).
    pub f_opts: Vec<u8>,
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
    let f_opts = mac.fhdr.f_opts.to_vec().map_err(malformed)?;
    Ok(Uplink {
        f_opts,
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

/// Decrypts a LoRaWAN 1.1 uplink's FOpts with NwkSEncKey (the 1.1 errata's block: 0x01 in byte 4
/// for the uplink/NFCnt counter, block counter 1). LoRaWAN 1.0.x sends FOpts in clear.
pub fn decrypt_uplink_f_opts(nwk_s_enc_key: &[u8; 16], uplink: &Uplink) -> Result<Vec<u8>, LorawanError> {
    if uplink.f_opts.is_empty() {
        return Ok(Vec::new());
    }
    let dev_addr_bytes = hex::decode(&uplink.dev_addr).map_err(malformed)?;
    let dev_addr = lrwn::DevAddr::from_slice(&dev_addr_bytes).map_err(malformed)?;
    lrwn::encrypt_f_opts(
        &AES128Key::from_bytes(*nwk_s_enc_key),
        false,
        true,
        &dev_addr,
        uplink.fcnt,
        &uplink.f_opts,
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
