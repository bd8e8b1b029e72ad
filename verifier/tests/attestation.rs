//! Attestation evidence: signed measurements and PSA tokens (current and legacy claim keys),
//! every refusal by its check name, and appraisal against reference values.
//!
//! Tokens here are built with coset; `gateway/tests/attestation_interop.rs` checks tokens made by
//! an independent implementation (Python pycose + cbor2).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use ciborium::value::Value;
use coset::{CborSerializable, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable, iana};
use proptest::prelude::*;
use verifier::attestation::{
    AppraisalPolicy, AttestationError, Evidence, LifecycleState, PsaProfile, ReferenceStatus, ReferenceValue, appraise,
    verify_measurement, verify_psa_token,
};
use verifier::challenge::{Curve, DeviceKey};

struct Signer {
    pair: EcdsaKeyPair,
}

impl Signer {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("keygen");
        Signer {
            pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).expect("key"),
        }
    }

    fn key(&self) -> DeviceKey {
        DeviceKey::from_sec1(Curve::P256, self.pair.public_key().as_ref()).expect("point")
    }

    fn sign1(&self, payload: Vec<u8>, alg: iana::Algorithm, tagged: bool) -> Vec<u8> {
        let rng = SystemRandom::new();
        let sign1 = CoseSign1Builder::new()
            .protected(HeaderBuilder::new().algorithm(alg).build())
            .payload(payload)
            .create_signature(b"", |tbs| self.pair.sign(&rng, tbs).expect("sign").as_ref().to_vec())
            .build();
        if tagged {
            sign1.to_tagged_vec().expect("encode")
        } else {
            sign1.to_vec().expect("encode")
        }
    }
}

fn cbor(map: Vec<(i64, Value)>) -> Vec<u8> {
    let value = Value::Map(map.into_iter().map(|(k, v)| (Value::Integer(k.into()), v)).collect());
    let mut out = Vec::new();
    ciborium::ser::into_writer(&value, &mut out).expect("cbor");
    out
}

const NONCE: [u8; 32] = [0x5a; 32];
const DIGEST: [u8; 32] = [0xd1; 32];
const SIGNER: [u8; 32] = [0x51; 32];

fn report(nonce: &[u8], digest: &[u8]) -> Vec<(i64, Value)> {
    vec![
        (1, Value::Bytes(nonce.to_vec())),
        (2, Value::Text("sensor-fw".into())),
        (3, Value::Text("1.4.2".into())),
        (4, Value::Bytes(digest.to_vec())),
        (5, Value::Integer(17.into())),
        (6, Value::Bytes(SIGNER.to_vec())),
        (7, Value::Text("eval3-0209B0".into())),
    ]
}

fn references() -> Vec<ReferenceValue> {
    vec![
        ReferenceValue {
            name: "sensor-fw".into(),
            version: "1.4.2".into(),
            digest: DIGEST.to_vec(),
            signer_id: Some(SIGNER.to_vec()),
            status: ReferenceStatus::Allowed,
        },
        ReferenceValue {
            name: "sensor-fw".into(),
            version: "1.3.0".into(),
            digest: vec![0xb0; 32],
            signer_id: None,
            status: ReferenceStatus::Blocked,
        },
    ]
}

#[test]
fn measurement_verifies_tagged_and_untagged_and_appraises() {
    let s = Signer::new();
    for tagged in [true, false] {
        let token = s.sign1(cbor(report(&NONCE, &DIGEST)), iana::Algorithm::ES256, tagged);
        let m = verify_measurement(&token, &s.key(), &NONCE, "eval3-0209B0").expect("verifies");
        assert_eq!(m.firmware_version, "1.4.2");
        assert_eq!(m.boot_counter, 17);
        let a = appraise(&Evidence::Measurement(m), &references(), &AppraisalPolicy::default()).expect("allowed");
        assert_eq!(a.firmware_version.as_deref(), Some("1.4.2"));
        assert_eq!(a.firmware_digest_hex.as_deref(), Some(hex::encode(DIGEST).as_str()));
    }
}

fn check(r: Result<impl std::fmt::Debug, AttestationError>) -> &'static str {
    r.expect_err("must be refused").check()
}

#[test]
fn measurement_refusals_name_their_check() {
    let s = Signer::new();
    let good = s.sign1(cbor(report(&NONCE, &DIGEST)), iana::Algorithm::ES256, true);
    let key = s.key();

    // Tampered signature, and another device's key.
    let mut tampered = good.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(
        check(verify_measurement(&tampered, &key, &NONCE, "eval3-0209B0")),
        "bad_signature"
    );
    assert_eq!(
        check(verify_measurement(&good, &Signer::new().key(), &NONCE, "eval3-0209B0")),
        "bad_signature"
    );
    // Tampered payload under the original signature.
    let mut flipped = good.clone();
    let at = flipped
        .windows(9)
        .position(|w| w == b"sensor-fw")
        .expect("name in payload");
    flipped[at] = b'S';
    assert_eq!(
        check(verify_measurement(&flipped, &key, &NONCE, "eval3-0209B0")),
        "bad_signature"
    );
    // Another challenge's nonce.
    assert_eq!(
        check(verify_measurement(&good, &key, &[0x5b; 32], "eval3-0209B0")),
        "nonce_mismatch"
    );
    // Algorithm not matching the key; no algorithm.
    let es384 = s.sign1(cbor(report(&NONCE, &DIGEST)), iana::Algorithm::ES384, true);
    assert_eq!(
        check(verify_measurement(&es384, &key, &NONCE, "eval3-0209B0")),
        "unsupported_algorithm"
    );
    // Someone else's device id in the report.
    assert_eq!(
        check(verify_measurement(&good, &key, &NONCE, "eval3-0209B1")),
        "device_mismatch"
    );
    // A missing claim, named.
    let mut claims = report(&NONCE, &DIGEST);
    claims.retain(|(k, _)| *k != 4);
    let e = verify_measurement(
        &s.sign1(cbor(claims), iana::Algorithm::ES256, true),
        &key,
        &NONCE,
        "eval3-0209B0",
    )
    .expect_err("no digest");
    assert_eq!((e.check(), e.claim()), ("missing_claim", Some("digest")));
    // A repeated key (claim confusion) is refused.
    let mut claims = report(&NONCE, &DIGEST);
    claims.push((4, Value::Bytes(vec![0xee; 32])));
    assert_eq!(
        check(verify_measurement(
            &s.sign1(cbor(claims), iana::Algorithm::ES256, true),
            &key,
            &NONCE,
            "eval3-0209B0"
        )),
        "malformed_claims"
    );
    // Not COSE at all; oversize.
    assert_eq!(check(verify_measurement(b"\xa0", &key, &NONCE, "x")), "malformed_token");
    assert_eq!(
        check(verify_measurement(&vec![0u8; 20_000], &key, &NONCE, "x")),
        "token_too_large"
    );
    // A DER signature is not a COSE signature.
    let rng = SystemRandom::new();
    let der_pair = EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        EcdsaKeyPair::generate_pkcs8(&aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .expect("keygen")
            .as_ref(),
    )
    .expect("key");
    let der_key = DeviceKey::from_sec1(Curve::P256, der_pair.public_key().as_ref()).expect("point");
    let der_token = CoseSign1Builder::new()
        .protected(HeaderBuilder::new().algorithm(iana::Algorithm::ES256).build())
        .payload(cbor(report(&NONCE, &DIGEST)))
        .create_signature(b"", |tbs| der_pair.sign(&rng, tbs).expect("sign").as_ref().to_vec())
        .build()
        .to_vec()
        .expect("encode");
    assert_eq!(
        check(verify_measurement(&der_token, &der_key, &NONCE, "eval3-0209B0")),
        "bad_signature"
    );
}

#[test]
fn appraisal_refusals() {
    let s = Signer::new();
    let key = s.key();
    let verify = |digest: &[u8], version: &str, signer: &[u8]| {
        let mut claims = report(&NONCE, digest);
        claims[2] = (3, Value::Text(version.into()));
        claims[5] = (6, Value::Bytes(signer.to_vec()));
        let token = s.sign1(cbor(claims), iana::Algorithm::ES256, true);
        let m = verify_measurement(&token, &key, &NONCE, "eval3-0209B0").expect("verifies");
        appraise(&Evidence::Measurement(m), &references(), &AppraisalPolicy::default())
    };
    assert_eq!(check(verify(&[0x77; 32], "1.4.2", &SIGNER)), "firmware_unknown");
    assert_eq!(check(verify(&[0xb0; 32], "1.3.0", &SIGNER)), "firmware_blocked");
    // A blocked version is blocked whatever its digest claims to be.
    assert_eq!(check(verify(&DIGEST, "1.3.0", &SIGNER)), "firmware_blocked");
    assert_eq!(check(verify(&DIGEST, "1.4.2", &[0x99; 32])), "signer_mismatch");
    assert_eq!(check(verify(&DIGEST, "9.9.9", &SIGNER)), "version_mismatch");
    assert!(verify(&DIGEST, "1.4.2", &SIGNER).is_ok());
    // Key possession alone appraises without firmware.
    let a = appraise(&Evidence::KeyPossession, &[], &AppraisalPolicy::default()).expect("ok");
    assert_eq!(a.firmware_digest_hex, None);
}

fn component(kind: &str, digest: &[u8], version: &str) -> Value {
    Value::Map(vec![
        (Value::Integer(1.into()), Value::Text(kind.into())),
        (Value::Integer(2.into()), Value::Bytes(digest.to_vec())),
        (Value::Integer(4.into()), Value::Text(version.into())),
        (Value::Integer(5.into()), Value::Bytes(SIGNER.to_vec())),
        (Value::Integer(6.into()), Value::Text("sha-256".into())),
    ])
}

fn psa_current(nonce: Value, lifecycle: u16, profile: &str) -> Vec<(i64, Value)> {
    let mut ueid = vec![0x01];
    ueid.extend_from_slice(&[0xa0; 32]);
    vec![
        (265, Value::Text(profile.into())),
        (2394, Value::Integer(1.into())),
        (2395, Value::Integer(lifecycle.into())),
        (2396, Value::Bytes(vec![0xaa; 32])),
        (2397, Value::Bytes(vec![0xbb; 32])),
        (
            2399,
            Value::Array(vec![
                component("BL", &[0xb1; 32], "0.2.0"),
                component("App", &DIGEST, "1.4.2"),
            ]),
        ),
        (10, nonce),
        (256, Value::Bytes(ueid)),
    ]
}

fn psa_refs() -> Vec<ReferenceValue> {
    let mut r = references();
    r.push(ReferenceValue {
        name: "BL".into(),
        version: "0.2.0".into(),
        digest: vec![0xb1; 32],
        signer_id: None,
        status: ReferenceStatus::Allowed,
    });
    r
}

#[test]
fn psa_current_keys() {
    let s = Signer::new();
    let key = s.key();
    for profile in ["tag:psacertified.org,2023:psa#tfm", "http://arm.com/psa/2.0.0"] {
        for nonce in [
            Value::Bytes(NONCE.to_vec()),
            Value::Array(vec![Value::Bytes(NONCE.to_vec())]),
        ] {
            let token = s.sign1(cbor(psa_current(nonce, 0x3000, profile)), iana::Algorithm::ES256, true);
            let claims = verify_psa_token(&token, &key, &NONCE).expect("verifies");
            assert_eq!(claims.lifecycle.state, LifecycleState::Secured);
            assert_eq!(claims.software_components.len(), 2);
            let a = appraise(&Evidence::Psa(claims), &psa_refs(), &AppraisalPolicy::default()).expect("allowed");
            // The application image is what the device is recorded as running.
            assert_eq!(a.firmware_version.as_deref(), Some("1.4.2"));
            assert_eq!(a.components, 2);
        }
    }
    let rfc = s.sign1(
        cbor(psa_current(
            Value::Bytes(NONCE.to_vec()),
            0x3000,
            "tag:psacertified.org,2023:psa#tfm",
        )),
        iana::Algorithm::ES256,
        false,
    );
    assert_eq!(
        verify_psa_token(&rfc, &key, &NONCE).expect("ok").profile,
        PsaProfile::Rfc9783
    );
}

#[test]
fn psa_lifecycle_and_claim_refusals() {
    let s = Signer::new();
    let key = s.key();
    let profile = "tag:psacertified.org,2023:psa#tfm";
    let sign = |claims: Vec<(i64, Value)>| s.sign1(cbor(claims), iana::Algorithm::ES256, true);
    // Debug lifecycle: verifies, fails appraisal; allowed when the policy says so.
    let debug = verify_psa_token(
        &sign(psa_current(Value::Bytes(NONCE.to_vec()), 0x4000, profile)),
        &key,
        &NONCE,
    )
    .expect("verifies");
    let e = appraise(&Evidence::Psa(debug.clone()), &psa_refs(), &AppraisalPolicy::default()).expect_err("debug");
    assert_eq!(
        (e.check(), e.claim()),
        ("lifecycle_not_allowed", Some("security_lifecycle"))
    );
    let lenient = AppraisalPolicy {
        allowed_lifecycles: vec![LifecycleState::Secured, LifecycleState::NonPsaRotDebug],
    };
    assert!(appraise(&Evidence::Psa(debug), &psa_refs(), &lenient).is_ok());
    // Lifecycle with a sub-state (0x30xx is still secured).
    let sub = verify_psa_token(
        &sign(psa_current(Value::Bytes(NONCE.to_vec()), 0x3003, profile)),
        &key,
        &NONCE,
    )
    .expect("verifies");
    assert_eq!(sub.lifecycle.state, LifecycleState::Secured);
    // Not a lifecycle state at all.
    assert_eq!(
        check(verify_psa_token(
            &sign(psa_current(Value::Bytes(NONCE.to_vec()), 0x7000, profile)),
            &key,
            &NONCE
        )),
        "invalid_claim"
    );
    // Wrong nonce, and more than one.
    assert_eq!(
        check(verify_psa_token(
            &sign(psa_current(Value::Bytes(vec![1; 32]), 0x3000, profile)),
            &key,
            &NONCE
        )),
        "nonce_mismatch"
    );
    let two = Value::Array(vec![Value::Bytes(NONCE.to_vec()), Value::Bytes(NONCE.to_vec())]);
    assert_eq!(
        check(verify_psa_token(&sign(psa_current(two, 0x3000, profile)), &key, &NONCE)),
        "invalid_claim"
    );
    // Unknown profile, bad instance id, missing components.
    assert_eq!(
        check(verify_psa_token(
            &sign(psa_current(
                Value::Bytes(NONCE.to_vec()),
                0x3000,
                "tag:example.com,2025:x"
            )),
            &key,
            &NONCE
        )),
        "unknown_profile"
    );
    let mut claims = psa_current(Value::Bytes(NONCE.to_vec()), 0x3000, profile);
    claims.retain(|(k, _)| *k != 256);
    claims.push((256, Value::Bytes(vec![0x02; 33])));
    let e = verify_psa_token(&sign(claims), &key, &NONCE).expect_err("ueid");
    assert_eq!(e.claim(), Some("instance_id"));
    let mut claims = psa_current(Value::Bytes(NONCE.to_vec()), 0x3000, profile);
    claims.retain(|(k, _)| *k != 2399);
    let e = verify_psa_token(&sign(claims), &key, &NONCE).expect_err("components");
    assert_eq!((e.check(), e.claim()), ("missing_claim", Some("software_components")));
    // A blocked bootloader fails the whole token.
    let claims = verify_psa_token(
        &sign(psa_current(Value::Bytes(NONCE.to_vec()), 0x3000, profile)),
        &key,
        &NONCE,
    )
    .expect("verifies");
    let mut refs = psa_refs();
    refs.push(ReferenceValue {
        name: "BL".into(),
        version: "0.2.0".into(),
        digest: vec![0xb1; 32],
        signer_id: None,
        status: ReferenceStatus::Blocked,
    });
    assert_eq!(
        check(appraise(&Evidence::Psa(claims), &refs, &AppraisalPolicy::default())),
        "firmware_blocked"
    );
}

fn psa_legacy(nonce: &[u8], with_profile: bool) -> Vec<(i64, Value)> {
    let mut ueid = vec![0x01];
    ueid.extend_from_slice(&[0xa0; 32]);
    let mut claims = vec![
        (-75001, Value::Integer((-1).into())),
        (-75002, Value::Integer(0x3000.into())),
        (-75003, Value::Bytes(vec![0xaa; 32])),
        (-75004, Value::Bytes(vec![0xbb; 32])),
        (-75005, Value::Text("0604565272829".into())),
        (-75006, Value::Array(vec![component("App", &DIGEST, "1.4.2")])),
        (-75008, Value::Bytes(nonce.to_vec())),
        (-75009, Value::Bytes(ueid)),
        (-75010, Value::Text("www.trustedfirmware.org".into())),
    ];
    if with_profile {
        claims.insert(0, (-75000, Value::Text("PSA_IOT_PROFILE_1".into())));
    }
    claims
}

#[test]
fn psa_legacy_keys() {
    let s = Signer::new();
    let key = s.key();
    for with_profile in [true, false] {
        let token = s.sign1(cbor(psa_legacy(&NONCE, with_profile)), iana::Algorithm::ES256, true);
        let claims = verify_psa_token(&token, &key, &NONCE).expect("legacy verifies");
        assert_eq!(claims.profile, PsaProfile::IotProfile1);
        assert_eq!(claims.client_id, Some(-1));
        assert_eq!(claims.hardware_version.as_deref(), Some("0604565272829"));
        assert!(appraise(&Evidence::Psa(claims), &psa_refs(), &AppraisalPolicy::default()).is_ok());
    }
    let token = s.sign1(cbor(psa_legacy(&[9; 32], true)), iana::Algorithm::ES256, true);
    assert_eq!(check(verify_psa_token(&token, &key, &NONCE)), "nonce_mismatch");
    // Neither vocabulary.
    let token = s.sign1(cbor(vec![(1, Value::Integer(1.into()))]), iana::Algorithm::ES256, true);
    assert_eq!(check(verify_psa_token(&token, &key, &NONCE)), "missing_claim");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Hostile bytes get a typed error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let key = Signer::new().key();
        prop_assert!(verify_measurement(&bytes, &key, &NONCE, "d").is_err());
        prop_assert!(verify_psa_token(&bytes, &key, &NONCE).is_err());
    }

    /// Any single-byte change to a valid token is refused.
    #[test]
    fn any_bit_flip_is_refused(at in 0usize..400, bit in 0u8..8) {
        let s = Signer::new();
        let token = s.sign1(cbor(report(&NONCE, &DIGEST)), iana::Algorithm::ES256, true);
        let mut t = token.clone();
        let i = at % t.len();
        t[i] ^= 1 << bit;
        prop_assert!(verify_measurement(&t, &s.key(), &NONCE, "eval3-0209B0").is_err());
    }
}
