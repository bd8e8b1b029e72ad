//! A simulated Sigfox device with an STSAFE-A1SX: the secure element holds the device id and the
//! NAK, and it authenticates each uplink (UL-AUTH) with the NAK that never leaves it. Each
//! message goes out three times on air (the second and third transmissions convolutionally
//! coded), with a 12-bit sequence number that rolls over after 0xFFF.
//!
//! [`SigfoxDevice::send`] gives the frames as a receiver would capture them (bytes with their
//! preamble), for `POST /api/v1/sigfox/frames`; [`SigfoxDevice::send_via_backend`] gives the
//! data callback the Sigfox cloud would POST for the message (`POST /sigfox/callback`), and
//! [`SigfoxDevice::receive_downlink`] checks a downlink frame as the device does (DL-AUTH).

use verifier::sigfox::downlink::{DL_PAYLOAD, decode_downlink};
use verifier::sigfox::{Payload, SEQ_MODULUS, SigfoxError, encode_uplink, parse_uplink};

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

    /// Sends a message through the Sigfox network: the data callback the Sigfox cloud then POSTs
    /// (every field of a custom JSON template, as a device type would configure it). `time` is
    /// when the cloud received it (unix seconds); `ack` asks for a downlink.
    pub fn send_via_backend(&mut self, payload: &[u8], ack: bool, time: i64) -> Result<serde_json::Value, SigfoxError> {
        let [first, ..] = self.send(payload, ack)?;
        let up = parse_uplink(&first)?;
        // What the cloud checks before it calls back.
        up.verify(&self.nak)?;
        Ok(serde_json::json!({
            "device": up.device_id_hex(),
            "time": time,
            "data": hex::encode(&up.payload),
            "seqNumber": up.seq_number,
            "ack": ack,
            "duplicate": false,
            "station": "1E7A",
            "snr": 18.37,
            "rssi": -121.0,
            "avgSnr": 30.2,
            "deviceTypeId": "5f2a0c6b8e2a4b0001c0ffee",
        }))
    }

    /// Checks a downlink frame (15 bytes) answering the last message sent, as the device does:
    /// error correction, CRC-8 and the DL-AUTH under its NAK. Returns the 8-byte payload.
    pub fn receive_downlink(&self, frame: &[u8]) -> Result<[u8; DL_PAYLOAD], SigfoxError> {
        let last = (self.next_seq + SEQ_MODULUS - 1) % SEQ_MODULUS;
        decode_downlink(frame, &self.nak, self.device_id, last)
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

    #[test]
    fn callbacks_and_downlinks() {
        let nak = [0x21; 16];
        let mut device = SigfoxDevice::new(0x004D_33DB, nak, 0xFFF);
        let body = device.send_via_backend(b"\x01\x02", true, 1_764_590_000).unwrap();
        let parsed =
            verifier::sigfox::callback::parse(verifier::sigfox::callback::Encoding::Json, body.to_string().as_bytes())
                .unwrap();
        assert_eq!(
            (parsed.seq_number, parsed.ack, parsed.data.as_slice()),
            (0xFFF, true, &[1u8, 2][..])
        );
        let frame = verifier::sigfox::downlink::encode_downlink(&nak, 0x004D_33DB, 0xFFF, &[7; 8]);
        assert_eq!(device.receive_downlink(&frame), Ok([7; 8]));
        let other = verifier::sigfox::downlink::encode_downlink(&[0; 16], 0x004D_33DB, 0xFFF, &[7; 8]);
        assert!(device.receive_downlink(&other).is_err(), "a downlink under another key");
    }
}
