//! Attestation evidence for tests and the fuzzer, signed with a test device's key by RustCrypto's
//! `p256` (independent of the aws-lc verifier under test). The Python attester
//! (`scripts/attestation/attester.py`) is the independent *encoder*; this one only seeds fuzzing.

use crate::TestDevice;
use ciborium::value::Value;
use coset::{CborSerializable, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable, iana};
use p256::ecdsa::signature::Signer;
use p256::pkcs8::DecodePrivateKey;

fn cbor(map: Vec<(i64, Value)>) -> Vec<u8> {
    let value = Value::Map(map.into_iter().map(|(k, v)| (Value::Integer(k.into()), v)).collect());
    let mut out = Vec::new();
    ciborium::ser::into_writer(&value, &mut out).expect("CBOR encodes");
    out
}

/// ES256 COSE_Sign1 (tagged) over `payload` with the device's P-256 key.
pub fn sign1(device: &TestDevice, payload: Vec<u8>, tagged: bool) -> Vec<u8> {
    let key = p256::ecdsa::SigningKey::from_pkcs8_der(&device.key.serialize_der()).expect("a P-256 device key");
    let sign1 = CoseSign1Builder::new()
        .protected(HeaderBuilder::new().algorithm(iana::Algorithm::ES256).build())
        .payload(payload)
        .create_signature(b"", |tbs| {
            let sig: p256::ecdsa::Signature = key.sign(tbs);
            sig.to_bytes().to_vec()
        })
        .build();
    if tagged {
        sign1.to_tagged_vec().expect("COSE encodes")
    } else {
        sign1.to_vec().expect("COSE encodes")
    }
}

/// fleetward's signed firmware measurement (docs/attestation.md).
pub fn measurement(device: &TestDevice, nonce: &[u8], device_id: &str, digest: &[u8], version: &str) -> Vec<u8> {
    sign1(
        device,
        cbor(vec![
            (1, Value::Bytes(nonce.to_vec())),
            (2, Value::Text("sensor-fw".into())),
            (3, Value::Text(version.into())),
            (4, Value::Bytes(digest.to_vec())),
            (5, Value::Integer(7.into())),
            (6, Value::Bytes(vec![0x51; 32])),
            (7, Value::Text(device_id.into())),
        ]),
        true,
    )
}

fn component(kind: &str, digest: &[u8], version: &str) -> Value {
    Value::Map(vec![
        (Value::Integer(1.into()), Value::Text(kind.into())),
        (Value::Integer(2.into()), Value::Bytes(digest.to_vec())),
        (Value::Integer(4.into()), Value::Text(version.into())),
        (Value::Integer(5.into()), Value::Bytes(vec![0x51; 32])),
    ])
}

/// A PSA token (RFC 9783 keys, or the legacy PSA_IOT_PROFILE_1 keys).
pub fn psa(device: &TestDevice, nonce: &[u8], lifecycle: u16, legacy: bool) -> Vec<u8> {
    let mut ueid = vec![0x01];
    ueid.extend_from_slice(&[0xa0; 32]);
    let components = Value::Array(vec![
        component("BL", &[0xb1; 32], "0.2.0"),
        component("App", &[0xd1; 32], "1.4.2"),
    ]);
    let claims = if legacy {
        vec![
            (-75000, Value::Text("PSA_IOT_PROFILE_1".into())),
            (-75001, Value::Integer((-1).into())),
            (-75002, Value::Integer(lifecycle.into())),
            (-75003, Value::Bytes(vec![0xaa; 32])),
            (-75004, Value::Bytes(vec![0xbb; 32])),
            (-75006, components),
            (-75008, Value::Bytes(nonce.to_vec())),
            (-75009, Value::Bytes(ueid)),
        ]
    } else {
        vec![
            (265, Value::Text("tag:psacertified.org,2023:psa#tfm".into())),
            (2394, Value::Integer(1.into())),
            (2395, Value::Integer(lifecycle.into())),
            (2396, Value::Bytes(vec![0xaa; 32])),
            (2397, Value::Bytes(vec![0xbb; 32])),
            (2399, components),
            (10, Value::Bytes(nonce.to_vec())),
            (256, Value::Bytes(ueid)),
        ]
    };
    sign1(device, cbor(claims), true)
}
