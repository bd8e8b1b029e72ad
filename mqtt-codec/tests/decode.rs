//! The decoder on valid packets of both versions (bytes written by hand from the MQTT 3.1.1 and
//! 5.0 specifications), on hostile input (no panics: the shared fuzz harness under proptest, and
//! a replay of every input the `mqtt` fuzz target ever crashed on).
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use fleetward_test_support::fuzz;
use mqtt_codec::{CodecError, ConnectCode, Decoder, Encoder, Incoming, Qos, Version};
use proptest::prelude::*;

fn decode_all(bytes: &[u8]) -> (Decoder, Vec<Result<Incoming, CodecError>>) {
    let mut d = Decoder::new(1024);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        match d.decode(&mut buf) {
            Ok(Some(p)) => out.push(Ok(p)),
            Ok(None) => break,
            Err(e) => {
                out.push(Err(e));
                break;
            }
        }
    }
    (d, out)
}

#[test]
fn v311_connect_publish_qos1_subscribe() {
    let mut bytes = vec![
        0x10, 0x1A, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xC2, 0x00, 0x3C, 0x00, 0x02, b'd', b'1', // CONNECT
        0x00, 0x05, b't', b'o', b'k', b'e', b'n', 0x00, 0x03, b's', b'e', b'c', // user, password
    ];
    // PUBLISH QoS 1, dup, topic "devices/d1/t", pkid 0x1234, payload "hi"
    bytes.extend_from_slice(&[0x3A, 0x12, 0x00, 0x0C]);
    bytes.extend_from_slice(b"devices/d1/t");
    bytes.extend_from_slice(&[0x12, 0x34, b'h', b'i']);
    // SUBSCRIBE pkid 7, "devices/d1/#" QoS 1
    bytes.extend_from_slice(&[0x82, 0x11, 0x00, 0x07, 0x00, 0x0C]);
    bytes.extend_from_slice(b"devices/d1/#");
    bytes.push(0x01);
    bytes.extend_from_slice(&[0xC0, 0x00, 0xE0, 0x00]); // PINGREQ, DISCONNECT
    let (d, packets) = decode_all(&bytes);
    assert_eq!(d.version(), Some(Version::V311));
    let packets: Vec<_> = packets.into_iter().map(Result::unwrap).collect();
    match &packets[0] {
        Incoming::Connect(c) => {
            assert_eq!(c.client_id, "d1");
            assert!(c.clean_session);
            assert_eq!(c.keep_alive_secs, 60);
            assert_eq!(c.username.as_deref(), Some("token"));
            assert_eq!(c.password.as_deref(), Some("sec"));
        }
        other => panic!("{other:?}"),
    }
    match &packets[1] {
        Incoming::Publish(p) => {
            assert_eq!(
                (p.topic.as_str(), &p.payload[..], p.qos, p.pkid, p.dup),
                ("devices/d1/t", &b"hi"[..], Qos::AtLeastOnce, 0x1234, true)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&packets[2], Incoming::Subscribe { pkid: 7, filters } if filters[0].filter == "devices/d1/#" && filters[0].qos == 1)
    );
    assert_eq!(packets[3], Incoming::PingReq);
    assert_eq!(packets[4], Incoming::Disconnect);
}

#[test]
fn v5_connect_and_publish_with_properties() {
    let mut bytes = vec![0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x1E];
    bytes.extend_from_slice(&[0x05, 0x11, 0x00, 0x00, 0x0E, 0x10]); // properties: session expiry 3600
    bytes.extend_from_slice(&[0x00, 0x01, b'x']);
    // PUBLISH QoS 1 topic "a/b" pkid 1, properties: payload format indicator = 1; payload "z"
    bytes.extend_from_slice(&[
        0x32, 0x0B, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, 0x02, 0x01, 0x01, b'z',
    ]);
    let (d, packets) = decode_all(&bytes);
    assert_eq!(d.version(), Some(Version::V5));
    match &packets[0] {
        Ok(Incoming::Connect(c)) => assert_eq!(c.session_expiry_secs, Some(3600)),
        other => panic!("{other:?}"),
    }
    match &packets[1] {
        Ok(Incoming::Publish(p)) => assert_eq!((p.topic.as_str(), &p.payload[..], p.pkid), ("a/b", &b"z"[..], 1)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hostile_input_gets_typed_errors() {
    // Not a CONNECT first.
    assert!(matches!(
        decode_all(&[0x30, 0x00]).1[0],
        Err(CodecError::ExpectedConnect)
    ));
    // MQTT 3.1 (level 3) and an unknown level 9.
    let v3 = [
        0x10, 0x0C, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x1E,
    ];
    assert!(matches!(decode_all(&v3).1[0], Err(CodecError::UnsupportedVersion(3))));
    // Oversized packet announced in the header: refused before it is buffered.
    let (_, r) = decode_all(&[0x10, 0xFF, 0xFF, 0x03]);
    assert!(matches!(r[0], Err(CodecError::TooLarge { .. })), "{r:?}");
    // QoS 2 publish after CONNECT.
    let mut b = fleetward_connect();
    b.extend_from_slice(&[0x34, 0x05, 0x00, 0x01, b't', 0x00, 0x01]);
    assert!(matches!(decode_all(&b).1[1], Err(CodecError::QosNotSupported)));
    // Wildcards in a publish topic; invalid UTF-8 topic.
    let mut b = fleetward_connect();
    b.extend_from_slice(&[0x30, 0x03, 0x00, 0x01, b'#']);
    assert!(matches!(decode_all(&b).1[1], Err(CodecError::InvalidTopic)));
    let mut b = fleetward_connect();
    b.extend_from_slice(&[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28]);
    assert!(matches!(decode_all(&b).1[1], Err(CodecError::InvalidTopic)));
    // A second CONNECT.
    let mut b = fleetward_connect();
    b.extend_from_slice(&fleetward_connect());
    assert!(decode_all(&b).1[1].is_err());
}

fn fleetward_connect() -> Vec<u8> {
    vec![
        0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x1E, 0x00, 0x02, b'd', b'1',
    ]
}

#[test]
fn encoder_writes_what_each_version_expects() {
    let mut out = BytesMut::new();
    Encoder { version: Version::V311 }.connack(ConnectCode::ClientIdNotValid, false, &mut out);
    assert_eq!(&out[..], &[0x20, 0x02, 0x00, 0x02]);
    out.clear();
    Encoder { version: Version::V5 }.connack(ConnectCode::NotAuthorized, false, &mut out);
    assert_eq!(&out[..4], &[0x20, 0x03, 0x00, 0x87]);
    out.clear();
    Encoder { version: Version::V311 }.publish("a/b", b"xy", Qos::AtLeastOnce, 0x0102, false, &mut out);
    assert_eq!(
        &out[..],
        &[0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x02, b'x', b'y']
    );
    out.clear();
    Encoder { version: Version::V311 }.suback(9, &[Some(Qos::AtLeastOnce), None], &mut out);
    assert_eq!(&out[..], &[0x90, 0x04, 0x00, 0x09, 0x01, 0x80]);
    out.clear();
    Encoder { version: Version::V311 }.puback(5, &mut out);
    assert_eq!(&out[..], &[0x40, 0x02, 0x00, 0x05]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, .. ProptestConfig::default() })]

    #[test]
    fn mqtt_decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzz::mqtt(&data);
    }
}

#[test]
fn fuzz_regressions_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/mqtt");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        fuzz::mqtt(&std::fs::read(&path).unwrap());
    }
}
