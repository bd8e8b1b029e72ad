//! Sigfox uplink rules against public known-answer vectors
//! (test-support/fixtures/vectors/sigfox_vectors.json: renard's test data and a frame captured
//! off the air, each naming its source), then every length class and transmission through
//! [`encode_uplink`] and back, and hostile frames refused by name.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use verifier::sigfox::{
    FrameClass, Payload, SigfoxError, crc16, encode_uplink, parse_uplink, parse_uplink_hex, ul_auth, ul_auth_len,
};

fn vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../test-support/fixtures/vectors/sigfox_vectors.json"
    ))
    .expect("vectors file");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["vectors"].as_array().unwrap().clone()
}

fn hex16(v: &Value) -> [u8; 16] {
    hex::decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

#[test]
fn crc_and_ul_auth_of_captured_packets() {
    let mut checked = 0;
    for v in vectors() {
        let (i, e) = (&v["inputs"], &v["expected"]);
        let Some(packet) = i.get("packet_without_crc") else {
            continue;
        };
        let packet = bytes(packet);
        let nak = hex16(&i["nak"]);
        assert_eq!(
            format!("{:04x}", crc16(&packet)),
            e["crc16_on_air"].as_str().unwrap(),
            "{}",
            v["id"]
        );
        // The packet with its CRC appended parses as a first transmission and verifies.
        let mut frame = packet.clone();
        frame.extend_from_slice(&crc16(&packet).to_be_bytes());
        let up = parse_uplink(&frame).unwrap();
        assert_eq!(up.device_id_hex(), i["device_id"].as_str().unwrap().to_uppercase());
        assert_eq!(
            u64::from(up.seq_number),
            i["seq_number"].as_u64().unwrap(),
            "{}",
            v["id"]
        );
        assert_eq!(up.payload, bytes(&i["payload_hex"]));
        assert_eq!(up.ul_auth, bytes(&e["ul_auth"]));
        assert_eq!(up.class, FrameClass::UpTo12);
        up.verify(&nak).unwrap();
        // Another key does not verify it.
        let mut other = nak;
        other[0] ^= 1;
        assert_eq!(up.verify(&other), Err(SigfoxError::UlAuthMismatch));
        checked += 1;
    }
    assert_eq!(checked, 5, "the renard packets and the shared one");
}

#[test]
fn ul_auth_is_the_last_cbc_block() {
    let v = vectors()
        .into_iter()
        .find(|v| v["id"] == "renard-aes-cbc-mac1")
        .unwrap();
    let (i, e) = (&v["inputs"], &v["expected"]);
    let tag = ul_auth(&hex16(&i["nak"]), &bytes(&i["authenticated"]), 3);
    assert_eq!(hex::encode(&tag), e["ul_auth"].as_str().unwrap());
    assert_eq!(&bytes(&e["cbc_output"])[16..19], &tag[..]);
}

#[test]
fn a_frame_captured_off_the_air_encodes_and_parses_byte_for_byte() {
    let v = vectors()
        .into_iter()
        .find(|v| v["id"] == "generalzero-deadbeef-sna23")
        .unwrap();
    let (i, e) = (&v["inputs"], &v["expected"]);
    let nak = hex16(&i["nak"]);
    let device = u32::from_str_radix(i["device_id"].as_str().unwrap(), 16).unwrap();
    let seq = i["seq_number"].as_u64().unwrap() as u16;
    let frame = encode_uplink(&nak, device, seq, Payload::Bytes(&bytes(&i["payload_hex"])), false, 0).unwrap();
    assert_eq!(hex::encode(&frame), e["frame"].as_str().unwrap());
    let hex = e["frame"].as_str().unwrap();
    // With the preamble, without it (odd nibbles, from the frame type), and as bytes.
    for form in [
        hex.to_owned(),
        hex[5..].to_owned(),
        hex.to_uppercase(),
        format!("0x{hex}"),
    ] {
        let up = parse_uplink_hex(&form).unwrap();
        assert_eq!(
            (
                up.seq_number,
                up.device_id_hex().as_str(),
                up.payload.as_slice(),
                up.replica
            ),
            (seq, "004D33DB", &[0xde, 0xad, 0xbe, 0xef][..], 0),
            "{form}"
        );
        assert_eq!(hex::encode(&up.ul_auth), e["ul_auth"].as_str().unwrap());
        up.verify(&nak).unwrap();
    }
    // The packet and CRC alone (what some receivers print).
    let up = parse_uplink_hex(&hex[8..]).unwrap();
    up.verify(&nak).unwrap();
}

#[test]
fn every_class_and_transmission_round_trips() {
    let nak = [0x5A; 16];
    let device = 0x0123_ABCD;
    let mut payloads: Vec<Payload<'_>> = vec![Payload::Bit(false), Payload::Bit(true)];
    let data: Vec<u8> = (1..=12).collect();
    for len in 0..=12 {
        payloads.push(Payload::Bytes(&data[..len]));
    }
    for payload in payloads {
        for replica in 0..3 {
            for downlink in [false, true] {
                let seq = 0xFFF - replica as u16;
                let frame = encode_uplink(&nak, device, seq, payload, downlink, replica).unwrap();
                let up = parse_uplink(&frame).unwrap_or_else(|e| panic!("{payload:?} replica {replica}: {e}"));
                assert_eq!(usize::from(up.replica), replica);
                assert_eq!(
                    (up.seq_number, up.device_id, up.downlink_requested),
                    (seq, device, downlink)
                );
                match payload {
                    Payload::Bit(b) => {
                        assert_eq!((up.class, up.bit, up.payload.len()), (FrameClass::Bit, Some(b), 0));
                    }
                    Payload::Bytes(b) => {
                        assert_eq!(up.payload, b);
                        assert_eq!(Some(up.class), FrameClass::for_payload(b.len()));
                        assert_eq!(up.ul_auth.len(), ul_auth_len(b.len()));
                        assert_eq!(up.bit, None);
                    }
                }
                assert_eq!(frame.len(), 6 + up.class.packet_len(), "preamble, type, packet, CRC");
                up.verify(&nak).unwrap();
                // The replicas differ on air from the first transmission.
                if replica > 0 {
                    let first = encode_uplink(&nak, device, seq, payload, downlink, 0).unwrap();
                    assert_ne!(frame[4..], first[4..]);
                }
            }
        }
    }
    assert_eq!(
        (2..=12).map(ul_auth_len).collect::<Vec<_>>(),
        [4, 3, 2, 5, 4, 3, 2, 5, 4, 3, 2],
        "the tag fills the class"
    );
}

#[test]
fn two_flipped_frame_type_bits_are_corrected_three_are_refused() {
    let nak = [7; 16];
    let frame = encode_uplink(&nak, 0x004D_33DB, 42, Payload::Bytes(b"hello"), false, 1).unwrap();
    let mut two = frame.clone();
    two[2] ^= 0x01; // frame type bits 8 and 7 (its first nibble shares a byte with the preamble)
    two[3] ^= 0x80;
    let up = parse_uplink(&two).unwrap();
    assert_eq!((up.replica, up.payload.as_slice()), (1, &b"hello"[..]));
    let mut three = two;
    three[3] ^= 0x01;
    assert!(matches!(
        parse_uplink(&three),
        Err(SigfoxError::FrameType { .. } | SigfoxError::CrcMismatch { .. } | SigfoxError::LengthMismatch { .. })
    ));
}

#[test]
fn hostile_frames_are_refused_by_name() {
    let nak = [9; 16];
    let frame = encode_uplink(&nak, 0x1000_0001, 7, Payload::Bytes(b"valve:on"), false, 0).unwrap();
    // One payload bit flipped: the CRC catches it.
    let mut flipped = frame.clone();
    flipped[12] ^= 0x10;
    assert_eq!(parse_uplink(&flipped).unwrap_err().check(), "crc_mismatch");
    // A forger who recomputes the CRC (it is not a secret) still cannot make the UL-AUTH.
    let mut forged = frame[4..frame.len() - 2].to_vec();
    forged[10] ^= 0x01;
    let crc = crc16(&forged);
    forged.extend_from_slice(&crc.to_be_bytes());
    let up = parse_uplink(&forged).unwrap();
    assert_eq!(up.verify(&nak).unwrap_err().check(), "ul_auth_mismatch");
    // A payload too long to send; lengths no uplink has; not hex; wrong LI for the class.
    assert_eq!(
        encode_uplink(&nak, 1, 1, Payload::Bytes(&[0; 13]), false, 0)
            .unwrap_err()
            .check(),
        "payload_too_long"
    );
    for (junk, check) in [
        ("", "frame_length"),
        ("aa", "frame_length"),
        ("aaaaa", "frame_type"),
        ("aaaaa35f", "length_mismatch"),
        (&"0".repeat(33), "frame_type"),
        (&"0".repeat(34), "frame_length"),
    ] {
        assert_eq!(parse_uplink_hex(junk).unwrap_err().check(), check, "{junk:?}");
    }
    assert_eq!(parse_uplink_hex("zz").unwrap_err().check(), "not_hex");
    // A 1-byte frame claiming a 3-byte tag: flags do not fit.
    let one = encode_uplink(&nak, 1, 1, Payload::Bytes(&[0x42]), false, 0).unwrap();
    let mut packet = one[4..one.len() - 2].to_vec();
    packet[0] |= 0x40;
    let crc = crc16(&packet);
    packet.extend_from_slice(&crc.to_be_bytes());
    assert_eq!(parse_uplink(&packet).unwrap_err().check(), "flags");
}

/// renard's downlink frames (one intact, one with two flipped bits) decode to their payloads:
/// de-whitening, BCH correction, CRC-8 and DL-AUTH; our encoder rebuilds the intact frames
/// byte for byte; renard's CRC-8 vectors hold.
#[test]
fn downlink_frames_of_renard() {
    use verifier::sigfox::downlink::{crc8, decode_downlink, encode_downlink};
    let mut checked = 0;
    for v in vectors() {
        let (i, e) = (&v["inputs"], &v["expected"]);
        match v["category"].as_str().unwrap() {
            "downlink_crc8" => {
                assert_eq!(hex::encode([crc8(&bytes(&i["bytes"]))]), e["crc8"].as_str().unwrap());
                checked += 1;
            }
            c if c.starts_with("downlink_dl_auth") => {
                let nak = hex16(&i["nak"]);
                let id = u32::from_str_radix(i["device_id"].as_str().unwrap(), 16).unwrap();
                let seq = i["seq_number"].as_u64().unwrap() as u16;
                let payload: [u8; 8] = bytes(&e["payload"]).try_into().unwrap();
                let frame = bytes(&i["frame"]);
                assert_eq!(decode_downlink(&frame, &nak, id, seq), Ok(payload), "{}", v["id"]);
                let intact = i.get("frame_without_errors").map_or(frame, bytes);
                assert_eq!(encode_downlink(&nak, id, seq, &payload).to_vec(), intact, "{}", v["id"]);
                // Another uplink's sequence number, or a payload bit changed: refused.
                assert!(decode_downlink(&intact, &nak, id, seq ^ 1).is_err());
                let mut forged = encode_downlink(&nak, id, seq, &payload);
                forged[5] ^= 0x81;
                forged[9] ^= 0x81;
                assert!(decode_downlink(&forged, &nak, id, seq).is_err());
                checked += 1;
            }
            _ => {}
        }
    }
    assert_eq!(checked, 4);
}
