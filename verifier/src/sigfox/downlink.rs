//! Sigfox downlink frames: built and authenticated (DL-AUTH) for a device that asked for one
//! (BF set in its uplink), and decoded and verified the way the device does.
//!
//! The 15 bytes after the downlink preamble and frame type, as the public descriptions of the
//! radio protocol give them (Sigfox's `sigfox-ep-lib`, and the `renard` work):
//!
//! ```text
//! ECC (4 bytes) | payload (8 bytes) | DL-AUTH (2 bytes) | CRC-8 (1 byte)     then whitened
//! ```
//!
//! - DL-AUTH: the first 2 bytes of AES-128 under the NAK of one block: device id (LSB first),
//!   the sequence number of the uplink that asked (low byte, then the high 4 bits), the payload,
//!   and the device id's two low bytes again (LSB first).
//! - CRC-8 over payload and DL-AUTH: polynomial 0x2F, initial value 0, no reflection.
//! - ECC: every bit position of the 15 bytes is a BCH(15,11) codeword over GF(16)
//!   (x⁴ + x + 1): bytes 0 to 3 are its parity, so one flipped bit per bit position is
//!   corrected.
//! - Whitening: XOR with a 9-bit LFSR sequence (x⁹ + x⁵ + 1) seeded with
//!   device id × sequence number (mod 2⁹; 0 becomes 0x1FF).

use super::SigfoxError;
use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit};
use subtle::ConstantTimeEq;

/// Bytes of a downlink payload.
pub const DL_PAYLOAD: usize = 8;
/// Bytes of a downlink frame after its preamble and frame type.
pub const DL_FRAME: usize = 15;

const ECC: usize = 4;
const AUTH: usize = ECC + DL_PAYLOAD;
const CRC: usize = AUTH + 2;

/// αʲ in GF(16) with x⁴ = x + 1, for j = 0..15 (the BCH(15,11) parity-check columns).
const POW_ALPHA: [u8; 15] = {
    let mut t = [0u8; 15];
    let mut v: u8 = 1;
    let mut j = 0;
    while j < 15 {
        t[j] = v;
        v <<= 1;
        if v & 0x10 != 0 {
            v ^= 0x13;
        }
        j += 1;
    }
    t
};

/// The position whose column is `s` (a syndrome); 15 for `s == 0` (no error).
const LOG_ALPHA: [usize; 16] = {
    let mut t = [15usize; 16];
    let mut j = 0;
    while j < 15 {
        t[POW_ALPHA[j] as usize] = j;
        j += 1;
    }
    t
};

/// DL-AUTH of `payload` for the device's uplink `seq_number`.
pub fn dl_auth(nak: &[u8; 16], device_id: u32, seq_number: u16, payload: &[u8; DL_PAYLOAD]) -> [u8; 2] {
    let id = device_id.to_le_bytes();
    let mut block = [0u8; 16];
    block[..4].copy_from_slice(&id);
    block[4] = (seq_number & 0xFF) as u8;
    block[5] = ((seq_number >> 8) & 0x0F) as u8;
    block[6..14].copy_from_slice(payload);
    block[14] = id[0];
    block[15] = id[1];
    let mut b: aes::Block = block.into();
    Aes128::new(nak.into()).encrypt_block(&mut b);
    [b[0], b[1]]
}

/// The downlink CRC-8 (polynomial 0x2F, initial value 0).
pub fn crc8(bytes: &[u8]) -> u8 {
    let mut crc: u8 = 0;
    for &byte in bytes {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 { (crc << 1) ^ 0x2F } else { crc << 1 };
        }
    }
    crc
}

/// One step of the whitening sequence: 8 shifts of the 9-bit register (feedback: bits 5 ⊕ 0).
fn pn_next(mut pn: u16) -> u16 {
    for _ in 0..8 {
        let feedback = ((pn >> 5) ^ pn) & 1;
        pn = (pn >> 1) | (feedback << 8);
    }
    pn
}

/// XORs the whitening sequence into `frame` (its own inverse).
fn whiten(frame: &mut [u8; DL_FRAME + 1], device_id: u32, seq_number: u16) {
    let mut pn = (device_id.wrapping_mul(u32::from(seq_number)) & 0x1FF) as u16;
    if pn == 0 {
        pn = 0x1FF;
    }
    // Each step's 9 bits land across two bytes, one bit further right each time.
    let mut spread = |pn: u16, at: usize, shift: usize| {
        frame[at] ^= (pn >> (shift + 1)) as u8;
        frame[at + 1] ^= ((pn & ((1 << (shift + 1)) - 1)) << (7 - shift)) as u8;
    };
    for i in 0..8 {
        pn = pn_next(pn);
        spread(pn, i, i);
    }
    for i in 0..5 {
        pn = pn_next(pn);
        spread(pn, i + 9, i);
    }
    pn = pn_next(pn);
    frame[14] ^= (pn >> 6) as u8;
    frame[DL_FRAME] = 0;
}

fn syndrome(frame: &[u8; DL_FRAME + 1], bit: usize, from: usize) -> u8 {
    (from..15).fold(0, |s, j| s ^ (POW_ALPHA[j] * ((frame[j] >> bit) & 1)))
}

/// Builds the downlink frame (15 bytes, whitened) carrying `payload` to the device, answering
/// its uplink `seq_number`.
pub fn encode_downlink(nak: &[u8; 16], device_id: u32, seq_number: u16, payload: &[u8; DL_PAYLOAD]) -> [u8; DL_FRAME] {
    let mut frame = [0u8; DL_FRAME + 1];
    frame[ECC..AUTH].copy_from_slice(payload);
    frame[AUTH..CRC].copy_from_slice(&dl_auth(nak, device_id, seq_number, payload));
    frame[CRC] = crc8(&frame[ECC..CRC]);
    for bit in 0..8 {
        // Parity columns are α⁰..α³ = 1, 2, 4, 8: the data's syndrome, bit by bit.
        let s = syndrome(&frame, bit, ECC);
        for (k, byte) in frame[..ECC].iter_mut().enumerate() {
            *byte |= ((s >> k) & 1) << bit;
        }
    }
    whiten(&mut frame, device_id, seq_number);
    let mut out = [0u8; DL_FRAME];
    out.copy_from_slice(&frame[..DL_FRAME]);
    out
}

/// Decodes a received downlink frame as the device does: de-whitens, corrects one bit error per
/// bit position, checks the CRC-8 and the DL-AUTH (constant time). Returns the payload.
pub fn decode_downlink(
    frame: &[u8],
    nak: &[u8; 16],
    device_id: u32,
    seq_number: u16,
) -> Result<[u8; DL_PAYLOAD], SigfoxError> {
    if frame.len() != DL_FRAME {
        return Err(SigfoxError::DownlinkLength { len: frame.len() });
    }
    let mut f = [0u8; DL_FRAME + 1];
    f[..DL_FRAME].copy_from_slice(frame);
    whiten(&mut f, device_id, seq_number);
    for bit in 0..8 {
        let s = syndrome(&f, bit, 0);
        // Position 15 is the spare byte: a zero syndrome flips nothing that matters.
        f[LOG_ALPHA[usize::from(s)]] ^= 1 << bit;
    }
    let expected = crc8(&f[ECC..CRC]);
    if expected != f[CRC] {
        return Err(SigfoxError::DownlinkCrcMismatch {
            expected,
            found: f[CRC],
        });
    }
    let mut payload = [0u8; DL_PAYLOAD];
    payload.copy_from_slice(&f[ECC..AUTH]);
    let auth = dl_auth(nak, device_id, seq_number, &payload);
    if !bool::from(auth.ct_eq(&f[AUTH..CRC])) {
        return Err(SigfoxError::DlAuthMismatch);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gf16_tables() {
        assert_eq!(POW_ALPHA, [1, 2, 4, 8, 3, 6, 12, 11, 5, 10, 7, 14, 15, 13, 9]);
        assert_eq!(LOG_ALPHA[0], 15);
        assert!((1..16).all(|s| usize::from(POW_ALPHA[LOG_ALPHA[s]]) == s));
    }

    #[test]
    fn round_trip_and_single_bit_errors_per_position() {
        let nak = [0x5Au8; 16];
        for seq in [0u16, 1, 0x16B, 0xFFF] {
            let payload = [seq as u8, 1, 2, 3, 4, 5, 6, 0xFF];
            let frame = encode_downlink(&nak, 0x0102_0304, seq, &payload);
            assert_eq!(decode_downlink(&frame, &nak, 0x0102_0304, seq), Ok(payload));
            // One flipped bit in each of the 8 bit positions, anywhere: corrected.
            let mut damaged = frame;
            for bit in 0..8 {
                damaged[(bit * 7 + usize::from(seq)) % DL_FRAME] ^= 1 << bit;
            }
            assert_eq!(decode_downlink(&damaged, &nak, 0x0102_0304, seq), Ok(payload));
            // Another key, device or uplink: refused.
            assert!(decode_downlink(&frame, &[0; 16], 0x0102_0304, seq).is_err());
            assert!(decode_downlink(&frame, &nak, 0x0102_0305, seq).is_err());
            assert!(decode_downlink(&frame, &nak, 0x0102_0304, (seq + 1) % 4096).is_err());
        }
        assert_eq!(
            decode_downlink(&[0; 14], &nak, 1, 1),
            Err(SigfoxError::DownlinkLength { len: 14 })
        );
    }
}
