//! Sigfox uplink authenticity, pure: frame parsing for every length class and all three
//! transmissions (the replicas are convolutionally coded), CRC-16 integrity, and UL-AUTH
//! verification in constant time with the device's NAK.
//!
//! The layout follows the public descriptions of the Sigfox radio protocol (the `renard`
//! reverse-engineering work and Sigfox's own `sigfox-ep-lib`):
//!
//! ```text
//! frame  = preamble 0xAAAAA (5 nibbles) | frame type (12 bits) | packet | CRC-16
//! packet = flags (4 bits) | sequence number (12 bits) | device id (4 bytes, LSB first)
//!          | payload (0..=12 bytes) | UL-AUTH (2..=5 bytes)
//! ```
//!
//! - The frame type names the length class (1-bit or empty, 1, up to 4, up to 8, up to 12
//!   payload bytes) and the transmission (first, second, third). The values sit at least 5 bits
//!   apart, so up to 2 flipped bits are corrected by taking the nearest.
//! - Flags: for a 1-bit frame `1 | bit | BF | REP`; otherwise `LI (2 bits) | BF | REP`, where
//!   the UL-AUTH is `LI + 2` bytes long. A 1-byte frame always has a 2-byte UL-AUTH. BF asks for
//!   a downlink.
//! - UL-AUTH: the flags, sequence number, device id and payload, repeated cyclically to fill 16
//!   bytes (32 if they are longer than 16), encrypted with AES-128-CBC under the NAK with a zero
//!   IV. The tag is the first `n` bytes of the last ciphertext block.
//! - CRC: the bitwise inverse of CRC-16/CCITT (polynomial 0x1021, initial value 0, no reflection)
//!   over the packet.
//! - The second and third transmissions carry the packet and CRC through a rate-1 convolutional
//!   code with generator polynomials 1 + x + x² and 1 + x² respectively. Decoding divides by the
//!   polynomial; the CRC then tells whether the result is intact.
//!
//! Sigfox's optional payload encryption is not publicly specified. It is not implemented here:
//! a payload is reported as the bytes on air.

pub mod callback;
pub mod downlink;

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit};
use serde::Serialize;
use subtle::ConstantTimeEq;

/// The preamble every uplink starts with, 5 nibbles of `0xA`.
pub const PREAMBLE_NIBBLES: usize = 5;
/// Most payload bytes in an uplink.
pub const MAX_PAYLOAD: usize = 12;

/// An uplink's length class: how many payload bytes the packet has room for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameClass {
    /// No payload: a 1-bit frame (the bit is in the flags) or an empty one.
    Bit,
    /// Exactly one payload byte.
    OneByte,
    /// 2 to 4 payload bytes.
    UpTo4,
    /// 5 to 8 payload bytes.
    UpTo8,
    /// 9 to 12 payload bytes.
    UpTo12,
}

const CLASSES: [FrameClass; 5] = [
    FrameClass::Bit,
    FrameClass::OneByte,
    FrameClass::UpTo4,
    FrameClass::UpTo8,
    FrameClass::UpTo12,
];

/// The frame types: per transmission (first, second, third), per class in [`CLASSES`] order.
const FRAME_TYPES: [[u16; 5]; 3] = [
    [0x06B, 0x08D, 0x35F, 0x611, 0x94C],
    [0x6E0, 0x0D2, 0x598, 0x6BF, 0x971],
    [0x034, 0x302, 0x5A3, 0x72C, 0x997],
];

/// The convolutional code's generator polynomial for each transmission (none for the first).
const REPLICA_POLYNOMIALS: [u8; 3] = [0, 0b111, 0b101];

impl FrameClass {
    /// The class that carries `len` payload bytes (`None` above 12).
    pub fn for_payload(len: usize) -> Option<FrameClass> {
        Some(match len {
            0 => FrameClass::Bit,
            1 => FrameClass::OneByte,
            2..=4 => FrameClass::UpTo4,
            5..=8 => FrameClass::UpTo8,
            9..=12 => FrameClass::UpTo12,
            _ => return None,
        })
    }

    /// Packet bytes (flags and sequence number, device id, payload, UL-AUTH) of this class.
    pub fn packet_len(self) -> usize {
        match self {
            FrameClass::Bit => 8,
            FrameClass::OneByte => 9,
            FrameClass::UpTo4 => 12,
            FrameClass::UpTo8 => 16,
            FrameClass::UpTo12 => 20,
        }
    }

    fn index(self) -> usize {
        match self {
            FrameClass::Bit => 0,
            FrameClass::OneByte => 1,
            FrameClass::UpTo4 => 2,
            FrameClass::UpTo8 => 3,
            FrameClass::UpTo12 => 4,
        }
    }

    /// The 12-bit frame type of this class for transmission `replica` (0, 1 or 2).
    pub fn frame_type(self, replica: usize) -> u16 {
        FRAME_TYPES[replica.min(2)][self.index()]
    }
}

/// UL-AUTH bytes for a payload of `len` bytes: 2 for 1-bit, empty and 1-byte frames, else
/// `2 + (12 - len) mod 4` (the tag fills the packet up to its class's length).
pub fn ul_auth_len(len: usize) -> usize {
    if len <= 1 {
        2
    } else {
        2 + (MAX_PAYLOAD - len.min(MAX_PAYLOAD)) % 4
    }
}

/// Why an uplink frame was refused. Every variant names the failed check ([`SigfoxError::check`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "check", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SigfoxError {
    #[error("the frame is not hexadecimal")]
    NotHex,
    #[error("a frame of {nibbles} nibbles is no Sigfox uplink length (with or without preamble and frame type)")]
    FrameLength { nibbles: usize },
    #[error("frame type {found:#05x} is none of the uplink frame types (more than 2 bits from each)")]
    FrameType { found: u16 },
    #[error("the frame type announces a {expected}-byte packet, the frame holds {found} bytes")]
    LengthMismatch { expected: usize, found: usize },
    #[error("CRC-16 {found:#06x} does not match the packet's {expected:#06x}")]
    CrcMismatch { expected: u16, found: u16 },
    #[error("flags {flags:#x} do not fit a {class:?} frame")]
    Flags { flags: u8, class: FrameClass },
    #[error("the payload has {len} bytes; an uplink carries at most 12")]
    PayloadTooLong { len: usize },
    #[error("UL-AUTH does not verify with the device's NAK")]
    UlAuthMismatch,
    #[error("sequence number {got} is not after the last accepted {last} (a replay)")]
    SeqReplay { last: u16, got: u16 },
    #[error("a downlink frame has 15 bytes, this one {len}")]
    DownlinkLength { len: usize },
    #[error(
        "downlink CRC-8 {found:#04x} does not match the frame's {expected:#04x} (more than one bit error per position)"
    )]
    DownlinkCrcMismatch { expected: u8, found: u8 },
    #[error("DL-AUTH does not verify with the device's NAK")]
    DlAuthMismatch,
}

impl SigfoxError {
    /// Stable name of the failed check, for metrics and events.
    pub fn check(&self) -> &'static str {
        match self {
            SigfoxError::NotHex => "not_hex",
            SigfoxError::FrameLength { .. } => "frame_length",
            SigfoxError::FrameType { .. } => "frame_type",
            SigfoxError::LengthMismatch { .. } => "length_mismatch",
            SigfoxError::CrcMismatch { .. } => "crc_mismatch",
            SigfoxError::Flags { .. } => "flags",
            SigfoxError::PayloadTooLong { .. } => "payload_too_long",
            SigfoxError::UlAuthMismatch => "ul_auth_mismatch",
            SigfoxError::SeqReplay { .. } => "seq_replay",
            SigfoxError::DownlinkLength { .. } => "downlink_length",
            SigfoxError::DownlinkCrcMismatch { .. } => "downlink_crc_mismatch",
            SigfoxError::DlAuthMismatch => "dl_auth_mismatch",
        }
    }
}

/// Sequence numbers count modulo 4,096 (12 bits).
pub const SEQ_MODULUS: u16 = 4096;

/// Furthest ahead of the last accepted sequence number a new one is taken to be (half the
/// 12-bit space): anything else, the same number included, is behind it, a replay.
pub const DEFAULT_MAX_SEQ_GAP: u16 = SEQ_MODULUS / 2;

/// The sequence-number rule, across the 12-bit rollover (0xFFF is followed by 0x000): `got`
/// must be 1 to `max_gap` steps after `last`. Returns how many numbers were skipped (uplinks
/// lost on the way, for the gap events); `None` as `last` accepts any first number.
pub fn check_seq(last: Option<u16>, got: u16, max_gap: u16) -> Result<u16, SigfoxError> {
    let got = got % SEQ_MODULUS;
    let Some(last) = last.map(|l| l % SEQ_MODULUS) else {
        return Ok(0);
    };
    let steps = (got + SEQ_MODULUS - last) % SEQ_MODULUS;
    if steps == 0 || steps > max_gap.clamp(1, SEQ_MODULUS - 1) {
        return Err(SigfoxError::SeqReplay { last, got });
    }
    Ok(steps - 1)
}

/// A parsed uplink whose CRC checked. Its UL-AUTH is not yet verified: call [`Uplink::verify`]
/// with the NAK of [`Uplink::device_id`] before trusting anything in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub class: FrameClass,
    /// Which transmission this was: 0 (first), 1 or 2 (replicas). 0 when the frame came
    /// without its frame type.
    pub replica: u8,
    /// The flags nibble as sent.
    pub flags: u8,
    /// The 12-bit sequence number.
    pub seq_number: u16,
    /// The device id, as Sigfox prints it (`0x004D33DB` for `004D33DB`).
    pub device_id: u32,
    /// The payload bytes as sent (empty for 1-bit and empty frames).
    pub payload: Vec<u8>,
    /// A 1-bit frame's bit; `None` for every other frame (and for an empty one).
    pub bit: Option<bool>,
    /// BF: the device listens for a downlink after this uplink.
    pub downlink_requested: bool,
    /// The tag as sent.
    pub ul_auth: Vec<u8>,
    /// The packet up to the tag: flags and sequence number, device id, payload.
    authenticated: Vec<u8>,
}

impl Uplink {
    /// The device id as Sigfox prints it: 8 upper-case hex digits.
    pub fn device_id_hex(&self) -> String {
        format!("{:08X}", self.device_id)
    }

    /// Checks the UL-AUTH with the device's NAK, in constant time.
    pub fn verify(&self, nak: &[u8; 16]) -> Result<(), SigfoxError> {
        let expected = ul_auth(nak, &self.authenticated, self.ul_auth.len());
        if bool::from(expected.as_slice().ct_eq(&self.ul_auth)) {
            Ok(())
        } else {
            Err(SigfoxError::UlAuthMismatch)
        }
    }
}

/// The UL-AUTH over `authenticated` (flags and sequence number, device id, payload), `len` bytes.
pub fn ul_auth(nak: &[u8; 16], authenticated: &[u8], len: usize) -> Vec<u8> {
    let cipher = Aes128::new(nak.into());
    let blocks = if authenticated.len() > 16 { 2 } else { 1 };
    let mut chain = [0u8; 16];
    if !authenticated.is_empty() {
        for block in 0..blocks {
            let mut b: aes::Block = [0u8; 16].into();
            for (i, byte) in b.iter_mut().enumerate() {
                *byte = authenticated[(block * 16 + i) % authenticated.len()] ^ chain[i];
            }
            cipher.encrypt_block(&mut b);
            chain.copy_from_slice(&b);
        }
    }
    chain[..len.min(16)].to_vec()
}

/// The CRC an uplink carries over `packet`: the inverse of CRC-16/CCITT (0x1021, initial 0).
pub fn crc16(packet: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in packet {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    !crc
}

/// An uplink's payload, for [`encode_uplink`].
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// A 1-bit frame.
    Bit(bool),
    /// 0 to 12 bytes (0: an empty frame).
    Bytes(&'a [u8]),
}

/// Builds an uplink frame as a device sends it: preamble, frame type, packet with its UL-AUTH,
/// CRC; for `replica` 1 and 2 the packet and CRC go through the convolutional code. The result
/// has an even number of nibbles, so it is whole bytes.
pub fn encode_uplink(
    nak: &[u8; 16],
    device_id: u32,
    seq_number: u16,
    payload: Payload<'_>,
    downlink_requested: bool,
    replica: usize,
) -> Result<Vec<u8>, SigfoxError> {
    let (class, bytes, flags) = match payload {
        Payload::Bit(bit) => (FrameClass::Bit, &[][..], 0x8 | if bit { 0x4 } else { 0 }),
        Payload::Bytes(b) => {
            let class = FrameClass::for_payload(b.len()).ok_or(SigfoxError::PayloadTooLong { len: b.len() })?;
            let li = if b.len() <= 1 {
                0
            } else {
                (ul_auth_len(b.len()) - 2) as u8
            };
            (class, b, li << 2)
        }
    };
    let flags = flags | if downlink_requested { 0x2 } else { 0 };
    let mut packet = Vec::with_capacity(class.packet_len() + 2);
    packet.push((flags << 4) | ((seq_number >> 8) & 0x0F) as u8);
    packet.push(seq_number as u8);
    packet.extend_from_slice(&device_id.to_le_bytes());
    packet.extend_from_slice(bytes);
    let tag = ul_auth(nak, &packet, ul_auth_len(bytes.len()));
    packet.extend_from_slice(&tag);
    debug_assert_eq!(packet.len(), class.packet_len());
    let crc = crc16(&packet);
    packet.extend_from_slice(&crc.to_be_bytes());
    let body = match REPLICA_POLYNOMIALS[replica.min(2)] {
        0 => packet,
        polynomial => convolve(&packet, polynomial),
    };
    // Nibbles: preamble (5) + frame type (3) + body: the preamble and frame type share a byte.
    let frame_type = class.frame_type(replica);
    let mut frame = vec![0xAA, 0xAA, 0xA0 | (frame_type >> 8) as u8, frame_type as u8];
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Parses an uplink given in hex, as a receiver prints it: the whole frame with its preamble, the
/// frame from its frame type (an odd number of nibbles), or the packet and CRC alone (taken as a
/// first transmission). Every reading the length allows is tried; the first whose CRC checks
/// wins, else the first reading's error is returned.
pub fn parse_uplink_hex(hex: &str) -> Result<Uplink, SigfoxError> {
    let hex = hex.trim();
    let hex = hex.strip_prefix("0x").or_else(|| hex.strip_prefix("0X")).unwrap_or(hex);
    let nibbles: Vec<u8> = hex
        .bytes()
        .map(|c| (c as char).to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()
        .ok_or(SigfoxError::NotHex)?;
    parse_uplink_nibbles(&nibbles)
}

/// Parses an uplink given as whole bytes: with its preamble, or the packet and CRC alone.
pub fn parse_uplink(bytes: &[u8]) -> Result<Uplink, SigfoxError> {
    let nibbles: Vec<u8> = bytes.iter().flat_map(|b| [b >> 4, b & 0x0F]).collect();
    parse_uplink_nibbles(&nibbles)
}

fn parse_uplink_nibbles(nibbles: &[u8]) -> Result<Uplink, SigfoxError> {
    let mut first_error = None;
    let with_preamble = nibbles.len() > PREAMBLE_NIBBLES && nibbles[..PREAMBLE_NIBBLES].iter().all(|&n| n == 0xA);
    let mut readings: Vec<(&[u8], bool)> = Vec::new();
    if with_preamble {
        readings.push((&nibbles[PREAMBLE_NIBBLES..], true));
    }
    if !nibbles.len().is_multiple_of(2) {
        readings.push((nibbles, true));
    } else {
        readings.push((nibbles, false));
    }
    for (n, typed) in readings {
        match parse_reading(n, typed) {
            Ok(uplink) => return Ok(uplink),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(SigfoxError::FrameLength { nibbles: nibbles.len() }))
}

/// One reading: `typed` when `nibbles` start with the 3-nibble frame type.
fn parse_reading(nibbles: &[u8], typed: bool) -> Result<Uplink, SigfoxError> {
    let (class, replica, body) = if typed {
        if nibbles.len() < 3 || !(nibbles.len() - 3).is_multiple_of(2) {
            return Err(SigfoxError::FrameLength { nibbles: nibbles.len() });
        }
        let found = (u16::from(nibbles[0]) << 8) | (u16::from(nibbles[1]) << 4) | u16::from(nibbles[2]);
        let (replica, class) = nearest_frame_type(found).ok_or(SigfoxError::FrameType { found })?;
        let body = pack(&nibbles[3..]);
        if body.len() != class.packet_len() + 2 {
            return Err(SigfoxError::LengthMismatch {
                expected: class.packet_len(),
                found: body.len().saturating_sub(2),
            });
        }
        let body = match REPLICA_POLYNOMIALS[replica] {
            0 => body,
            polynomial => deconvolve(&body, polynomial),
        };
        (class, replica, body)
    } else {
        let body = pack(nibbles);
        let class = CLASSES
            .into_iter()
            .find(|c| c.packet_len() + 2 == body.len())
            .ok_or(SigfoxError::FrameLength { nibbles: nibbles.len() })?;
        (class, 0, body)
    };
    let (packet, crc) = body.split_at(class.packet_len());
    let found = u16::from_be_bytes([crc[0], crc[1]]);
    let expected = crc16(packet);
    if found != expected {
        return Err(SigfoxError::CrcMismatch { expected, found });
    }
    let flags = packet[0] >> 4;
    let (payload_len, tag_len, bit) = match class {
        FrameClass::Bit => (0, 2, (flags & 0x8 != 0).then_some(flags & 0x4 != 0)),
        FrameClass::OneByte if flags >> 2 == 0 => (1, 2, None),
        FrameClass::OneByte => return Err(SigfoxError::Flags { flags, class }),
        _ => {
            let tag_len = usize::from(flags >> 2) + 2;
            let payload_len = class.packet_len() - 6 - tag_len;
            // The length must belong to this class (a 1-byte payload has its own class).
            if FrameClass::for_payload(payload_len) != Some(class) {
                return Err(SigfoxError::Flags { flags, class });
            }
            (payload_len, tag_len, None)
        }
    };
    debug_assert_eq!(6 + payload_len + tag_len, class.packet_len());
    Ok(Uplink {
        class,
        replica: replica as u8,
        flags,
        seq_number: (u16::from(packet[0] & 0x0F) << 8) | u16::from(packet[1]),
        device_id: u32::from_le_bytes([packet[2], packet[3], packet[4], packet[5]]),
        payload: packet[6..6 + payload_len].to_vec(),
        bit,
        downlink_requested: flags & 0x2 != 0,
        ul_auth: packet[6 + payload_len..].to_vec(),
        authenticated: packet[..6 + payload_len].to_vec(),
    })
}

/// The transmission and class whose frame type is nearest `found`, if within 2 bits.
fn nearest_frame_type(found: u16) -> Option<(usize, FrameClass)> {
    let mut best: Option<(u32, usize, FrameClass)> = None;
    for (replica, row) in FRAME_TYPES.iter().enumerate() {
        for (class, &t) in CLASSES.iter().zip(row) {
            let distance = (t ^ found).count_ones();
            if best.is_none_or(|(d, _, _)| distance < d) {
                best = Some((distance, replica, *class));
            }
        }
    }
    best.filter(|(d, _, _)| *d <= 2).map(|(_, r, c)| (r, c))
}

/// Nibbles to bytes (an even count).
fn pack(nibbles: &[u8]) -> Vec<u8> {
    nibbles
        .chunks(2)
        .map(|p| (p[0] << 4) | p.get(1).copied().unwrap_or(0))
        .collect()
}

/// The bits of `data`, most significant first.
fn bits(data: &[u8]) -> impl Iterator<Item = bool> + '_ {
    data.iter().flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1 == 1))
}

fn from_bits(bits: impl Iterator<Item = bool>, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (i, bit) in bits.enumerate() {
        if bit {
            out[i / 8] |= 0x80 >> (i % 8);
        }
    }
    out
}

/// Multiplies the bit string by the generator polynomial over GF(2): output bit t is the XOR
/// of input bits t - k for each power x^k in `polynomial` (bit k).
fn convolve(data: &[u8], polynomial: u8) -> Vec<u8> {
    let mut history: u8 = 0;
    let out = bits(data).map(|bit| {
        history = (history << 1) | u8::from(bit);
        (history & polynomial).count_ones() % 2 == 1
    });
    from_bits(out, data.len())
}

/// Divides by the generator polynomial (its x^0 term set): input bit t is output bit t XOR the
/// input bits t - k for the higher powers x^k.
fn deconvolve(data: &[u8], polynomial: u8) -> Vec<u8> {
    let mut history: u8 = 0;
    let out = bits(data).map(|bit| {
        let decoded = bit ^ (((history << 1) & polynomial).count_ones() % 2 == 1);
        history = (history << 1) | u8::from(decoded);
        decoded
    });
    from_bits(out, data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convolution_round_trips() {
        let data = [0x12, 0x34, 0xAB, 0xFF, 0x00, 0x80];
        for polynomial in [0b111, 0b101] {
            let coded = convolve(&data, polynomial);
            assert_ne!(coded, data);
            assert_eq!(deconvolve(&coded, polynomial), data);
        }
    }

    #[test]
    fn sequence_numbers_roll_over_and_replays_are_refused() {
        assert_eq!(check_seq(None, 17, DEFAULT_MAX_SEQ_GAP), Ok(0));
        assert_eq!(check_seq(Some(17), 18, DEFAULT_MAX_SEQ_GAP), Ok(0));
        assert_eq!(check_seq(Some(17), 21, DEFAULT_MAX_SEQ_GAP), Ok(3), "3 lost");
        assert_eq!(check_seq(Some(0xFFF), 0x000, DEFAULT_MAX_SEQ_GAP), Ok(0), "rollover");
        assert_eq!(check_seq(Some(0xFFE), 0x001, DEFAULT_MAX_SEQ_GAP), Ok(2));
        for replay in [17, 16, 0, 17 + 2049] {
            assert_eq!(
                check_seq(Some(17), replay, DEFAULT_MAX_SEQ_GAP).unwrap_err().check(),
                "seq_replay",
                "{replay}"
            );
        }
        assert_eq!(check_seq(Some(17), 17 + 2048, DEFAULT_MAX_SEQ_GAP), Ok(2047));
        assert!(
            check_seq(Some(0x000), 0xFFF, DEFAULT_MAX_SEQ_GAP).is_err(),
            "behind across the rollover"
        );
    }

    #[test]
    fn frame_types_are_at_least_5_bits_apart() {
        let all: Vec<u16> = FRAME_TYPES.iter().flatten().copied().collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert!((a ^ b).count_ones() >= 5, "{a:03x} {b:03x}");
            }
        }
    }
}
