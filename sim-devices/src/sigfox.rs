//! A simulated Sigfox device with an STSAFE-A1SX: the secure element holds the device id and the
//! NAK, and it authenticates each uplink (UL-AUTH) with the NAK that never leaves it. Each
//! message goes out three times on air (the second and third transmissions convolutionally
//! coded), with a 12-bit sequence number that rolls over after 0xFFF.
//!
//! [`SigfoxDevice::send`] gives the frames as a receiver would capture them (bytes with their
//! preamble), for `POST /api/v1/sigfox/frames`.

use verifier::sigfox::{Payload, SEQ_MODULUS, SigfoxError, encode_uplink};

/// A simulated device: its id, NAK (in the simulated secure element) and next sequence number.
pub struct SigfoxDevice {
    pub device_id: u32,
    nak: [u8; 16],
    /// The sequence number of the next message.
    pub next_seq: u16,
}

impl std::fmt::Debug for SigfoxDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigfoxDevice")
            .field("device_id", &format_args!("{:08X}", self.device_id))
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl SigfoxDevice {
    pub fn new(device_id: u32, nak: [u8; 16], next_seq: u16) -> Self {
        SigfoxDevice {
            device_id,
            nak,
            next_seq: next_seq % SEQ_MODULUS,
        }
    }

    /// The device id as Sigfox prints it.
    pub fn device_id_hex(&self) -> String {
        format!("{:08X}", self.device_id)
    }

    /// Sends a message (0 to 12 bytes): its three transmissions as captured on air, first one
    /// first. The sequence number advances by one, rolling over after 0xFFF.
    pub fn send(&mut self, payload: &[u8], downlink_requested: bool) -> Result<[Vec<u8>; 3], SigfoxError> {
        self.send_payload(Payload::Bytes(payload), downlink_requested)
    }

    /// Sends a 1-bit message.
    pub fn send_bit(&mut self, bit: bool) -> Result<[Vec<u8>; 3], SigfoxError> {
        self.send_payload(Payload::Bit(bit), false)
    }

    fn send_payload(&mut self, payload: Payload<'_>, downlink_requested: bool) -> Result<[Vec<u8>; 3], SigfoxError> {
        let seq = self.next_seq;
        let frame = |replica| encode_uplink(&self.nak, self.device_id, seq, payload, downlink_requested, replica);
        let frames = [frame(0)?, frame(1)?, frame(2)?];
        self.next_seq = (seq + 1) % SEQ_MODULUS;
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verifier::sigfox::parse_uplink;

    #[test]
    fn three_transmissions_of_each_message_and_the_rollover() {
        let nak = [0x21; 16];
        let mut device = SigfoxDevice::new(0x004D_33DB, nak, 0xFFF);
        let frames = device.send(b"temp=21", true).unwrap();
        for (i, frame) in frames.iter().enumerate() {
            let up = parse_uplink(frame).unwrap();
            assert_eq!(
                (usize::from(up.replica), up.seq_number, up.payload.as_slice()),
                (i, 0xFFF, &b"temp=21"[..])
            );
            assert!(up.downlink_requested);
            up.verify(&nak).unwrap();
        }
        assert_ne!(frames[0], frames[1]);
        let up = parse_uplink(&device.send_bit(true).unwrap()[2]).unwrap();
        assert_eq!((up.seq_number, up.bit), (0x000, Some(true)), "rolled over");
        assert_eq!(device.next_seq, 1);
        assert!(!format!("{device:?}").contains("33, 33"), "the NAK is not printed");
    }
}
