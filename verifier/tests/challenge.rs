//! Challenge-response: known-answer vectors (RFC 6979), both digest modes, both signature
//! formats, both curves, and every way an answer can be wrong.
#![allow(clippy::unwrap_used)]

use fleetward_test_support::{KeyKind, TestCa, ca_with_off_curve_point};
use sha2::Digest;
use verifier::Timestamp;
use verifier::challenge::{
    Challenge, ChallengeError, ChallengePolicy, Curve, DeviceKey, DigestMode, SignatureError, SignatureFormat,
};

// RFC 6979 A.2.5 (P-256) and A.2.6 (P-384): private keys and the signatures of "sample".
const P256_X: &str = "c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721";
const P256_UX: &str = "60fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6";
const P256_SAMPLE_SHA256: &str = "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716\
                                  f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8";
const P384_X: &str = "6b9d3dad2e1b8c1c05b19875b6659f4de23c3b667bf297ba9aa47740787137d896d5724e4c70a825f872c9ea60d2edf5";
const P384_SAMPLE_SHA384: &str = "94edbb92a5ecb8aad4736e56c691916b3f88140666ce9fa73d64c4ea95ad133c81a648152e44acf96e36dd1e80fabe46\
                                  99ef4aeb15f178cea1fe40db2603138f130e740a19624526203b6351d0a3a94fa329c145786e679e7b82c71a38628ac8";

fn rfc6979_p256_key() -> DeviceKey {
    let sk = p256::ecdsa::SigningKey::from_slice(&hex::decode(P256_X).unwrap()).unwrap();
    let point = sk.verifying_key().to_sec1_point(false);
    assert_eq!(hex::encode(&point.as_bytes()[1..33]), P256_UX, "RFC 6979 public key Ux");
    DeviceKey::from_sec1(Curve::P256, point.as_bytes()).unwrap()
}

fn rfc6979_p384_key() -> DeviceKey {
    let sk = p384::ecdsa::SigningKey::from_slice(&hex::decode(P384_X).unwrap()).unwrap();
    let point = sk.verifying_key().to_sec1_point(false);
    DeviceKey::from_sec1(Curve::P384, point.as_bytes()).unwrap()
}

fn der_of_raw_p256(raw: &[u8]) -> Vec<u8> {
    p256::ecdsa::Signature::from_slice(raw)
        .unwrap()
        .to_der()
        .as_bytes()
        .to_vec()
}

#[test]
fn rfc6979_p256_known_answer_in_both_modes() {
    let key = rfc6979_p256_key();
    let sig = hex::decode(P256_SAMPLE_SHA256).unwrap();
    // Host hashed "sample", SE signed the digest: sha256 mode over the message.
    assert_eq!(
        key.verify_challenge(b"sample", &sig, SignatureFormat::Raw, DigestMode::Sha256),
        Ok(SignatureFormat::Raw)
    );
    // The same signature seen as "the SE signed these 32 bytes directly".
    let digest = sha2::Sha256::digest(b"sample");
    assert!(
        key.verify_challenge(&digest, &sig, SignatureFormat::Raw, DigestMode::Direct)
            .is_ok()
    );
    // DER form, and format detection.
    let der = der_of_raw_p256(&sig);
    assert_eq!(
        key.verify_challenge(b"sample", &der, SignatureFormat::Der, DigestMode::Sha256),
        Ok(SignatureFormat::Der)
    );
    assert_eq!(
        key.verify_challenge(b"sample", &der, SignatureFormat::Auto, DigestMode::Sha256),
        Ok(SignatureFormat::Der)
    );
    assert_eq!(
        key.verify_challenge(b"sample", &sig, SignatureFormat::Auto, DigestMode::Sha256),
        Ok(SignatureFormat::Raw)
    );
    // Not a signature of "test".
    assert_eq!(
        key.verify_challenge(b"test", &sig, SignatureFormat::Raw, DigestMode::Sha256),
        Err(SignatureError::Mismatch {
            curve: Curve::P256,
            mode: "sha256"
        })
    );
}

#[test]
fn rfc6979_p384_known_answer() {
    let key = rfc6979_p384_key();
    let sig = hex::decode(P384_SAMPLE_SHA384).unwrap();
    assert!(
        key.verify_challenge(b"sample", &sig, SignatureFormat::Raw, DigestMode::Sha384)
            .is_ok()
    );
    let digest = sha2::Sha384::digest(b"sample");
    assert!(
        key.verify_challenge(&digest, &sig, SignatureFormat::Auto, DigestMode::Direct)
            .is_ok()
    );
    assert!(
        key.verify_challenge(b"sample", &sig, SignatureFormat::Raw, DigestMode::Sha256)
            .is_err()
    );
}

fn device(kind: KeyKind) -> (fleetward_test_support::TestDevice, DeviceKey) {
    let ca = TestCa::root(KeyKind::P256, "Root");
    let dev = ca.issue_device(kind, "dev");
    let key = DeviceKey::from_certificate_der(&dev.der).unwrap();
    (dev, key)
}

#[test]
fn secure_element_answers_in_every_mode_and_format() {
    let challenge = [0xC3u8; 32];
    let (dev, key) = device(KeyKind::P256);
    assert_eq!(key.curve(), Curve::P256);
    let cases = [
        (dev.answer_direct(&challenge), DigestMode::Direct),
        (dev.answer_sha256(&challenge), DigestMode::Sha256),
    ];
    for (raw, mode) in cases {
        assert_eq!(
            key.verify_challenge(&challenge, &raw, SignatureFormat::Raw, mode),
            Ok(SignatureFormat::Raw),
            "{mode:?}"
        );
        let der = der_of_raw_p256(&raw);
        assert_eq!(
            key.verify_challenge(&challenge, &der, SignatureFormat::Der, mode),
            Ok(SignatureFormat::Der),
            "{mode:?}"
        );
        assert!(
            key.verify_challenge(&challenge, &raw, SignatureFormat::Auto, mode)
                .is_ok()
        );
    }
    // The modes are not interchangeable.
    let direct = dev.answer_direct(&challenge);
    assert_eq!(
        key.verify_challenge(&challenge, &direct, SignatureFormat::Raw, DigestMode::Sha256),
        Err(SignatureError::Mismatch {
            curve: Curve::P256,
            mode: "sha256"
        })
    );
    let hashed = dev.answer_sha256(&challenge);
    assert!(
        key.verify_challenge(&challenge, &hashed, SignatureFormat::Raw, DigestMode::Direct)
            .is_err()
    );

    let (dev, key) = device(KeyKind::P384);
    assert_eq!(key.curve(), Curve::P384);
    for (sig, mode) in [
        (dev.answer_direct(&challenge), DigestMode::Direct),
        (dev.answer_sha384(&challenge), DigestMode::Sha384),
        (dev.answer_sha256(&challenge), DigestMode::Sha256),
    ] {
        assert_eq!(sig.len(), 96);
        assert!(
            key.verify_challenge(&challenge, &sig, SignatureFormat::Raw, mode)
                .is_ok(),
            "{mode:?}"
        );
        assert!(
            key.verify_challenge(
                &challenge,
                &dev.se_sign_digest_der(&digest_for(mode, &challenge)),
                SignatureFormat::Der,
                mode
            )
            .is_ok()
        );
    }
}

fn digest_for(mode: DigestMode, challenge: &[u8]) -> Vec<u8> {
    match mode {
        DigestMode::Direct => challenge.to_vec(),
        DigestMode::Sha256 => sha2::Sha256::digest(challenge).to_vec(),
        DigestMode::Sha384 => sha2::Sha384::digest(challenge).to_vec(),
    }
}

#[test]
fn wrong_key_and_tampered_challenge() {
    let challenge = [0x11u8; 32];
    let (dev, key) = device(KeyKind::P256);
    let (_, other_key) = device(KeyKind::P256);
    let sig = dev.answer_direct(&challenge);
    assert!(
        key.verify_challenge(&challenge, &sig, SignatureFormat::Raw, DigestMode::Direct)
            .is_ok()
    );
    assert_eq!(
        other_key.verify_challenge(&challenge, &sig, SignatureFormat::Raw, DigestMode::Direct),
        Err(SignatureError::Mismatch {
            curve: Curve::P256,
            mode: "direct"
        })
    );
    for i in [0, 15, 31] {
        let mut tampered = challenge;
        tampered[i] ^= 0x80;
        assert!(
            key.verify_challenge(&tampered, &sig, SignatureFormat::Raw, DigestMode::Direct)
                .is_err()
        );
    }
    let mut bad_sig = sig.clone();
    bad_sig[40] ^= 0x01;
    assert!(
        key.verify_challenge(&challenge, &bad_sig, SignatureFormat::Raw, DigestMode::Direct)
            .is_err()
    );
}

#[test]
fn high_s_twin_is_accepted_like_the_secure_element_may_send() {
    // ECDSA (r, s) and (r, n-s) are both valid; SEs do not normalise s.
    let challenge = [0x42u8; 32];
    let (dev, key) = device(KeyKind::P256);
    let sig = p256::ecdsa::Signature::from_slice(&dev.answer_direct(&challenge)).unwrap();
    let (r, s) = sig.split_scalars();
    let twin = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
    for s in [sig, twin] {
        assert!(
            key.verify_challenge(&challenge, &s.to_bytes(), SignatureFormat::Raw, DigestMode::Direct)
                .is_ok()
        );
    }
}

#[test]
fn malformed_signatures() {
    let challenge = [0x11u8; 32];
    let (dev, key) = device(KeyKind::P256);
    let sig = dev.answer_direct(&challenge);
    let v = |s: &[u8], f| key.verify_challenge(&challenge, s, f, DigestMode::Direct);

    assert_eq!(
        v(&sig[..63], SignatureFormat::Raw),
        Err(SignatureError::BadLength {
            curve: Curve::P256,
            len: 63,
            expected: 64
        })
    );
    assert_eq!(
        v(&[sig.clone(), vec![0]].concat(), SignatureFormat::Raw),
        Err(SignatureError::BadLength {
            curve: Curve::P256,
            len: 65,
            expected: 64
        })
    );
    // r = 0
    let mut zero_r = sig.clone();
    zero_r[..32].fill(0);
    assert_eq!(
        v(&zero_r, SignatureFormat::Raw),
        Err(SignatureError::ScalarOutOfRange { curve: Curve::P256 })
    );
    // s = n (the group order) is out of range
    let n = hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551").unwrap();
    let s_is_n = [&sig[..32], &n[..]].concat();
    assert_eq!(
        v(&s_is_n, SignatureFormat::Raw),
        Err(SignatureError::ScalarOutOfRange { curve: Curve::P256 })
    );
    // all-ones
    assert_eq!(
        v(&[0xff; 64], SignatureFormat::Auto),
        Err(SignatureError::ScalarOutOfRange { curve: Curve::P256 })
    );

    let der = der_of_raw_p256(&sig);
    let malformed = SignatureError::MalformedDer { curve: Curve::P256 };
    assert_eq!(
        v(&[der.clone(), vec![0]].concat(), SignatureFormat::Der),
        Err(malformed.clone()),
        "trailing byte"
    );
    assert_eq!(
        v(&der[..der.len() - 1], SignatureFormat::Der),
        Err(malformed.clone()),
        "truncated"
    );
    assert_eq!(v(b"", SignatureFormat::Auto), Err(malformed.clone()), "empty");
    assert_eq!(v(&[0x30, 0x00], SignatureFormat::Der), Err(malformed.clone()));
    // Non-minimal INTEGER encoding of r (a leading zero that is not needed): not strict DER.
    let padded = {
        let r = &sig[..32];
        let s = &sig[32..];
        let r_enc = [&[0x00, 0x00][..], r].concat();
        let mut body = vec![0x02, r_enc.len() as u8];
        body.extend_from_slice(&r_enc);
        let s_enc = if s[0] & 0x80 != 0 {
            [&[0x00][..], s].concat()
        } else {
            s.to_vec()
        };
        body.extend_from_slice(&[0x02, s_enc.len() as u8]);
        body.extend_from_slice(&s_enc);
        [vec![0x30, body.len() as u8], body].concat()
    };
    assert_eq!(v(&padded, SignatureFormat::Der), Err(malformed));
}

#[test]
fn challenge_length_in_direct_mode() {
    let (dev, key) = device(KeyKind::P256);
    let sig = dev.answer_direct(&[1; 32]);
    assert_eq!(
        key.verify_challenge(&[1; 31], &sig, SignatureFormat::Raw, DigestMode::Direct),
        Err(SignatureError::BadDigestLength { len: 31 })
    );
    assert_eq!(
        key.verify_challenge(&[], &sig, SignatureFormat::Raw, DigestMode::Direct),
        Err(SignatureError::BadDigestLength { len: 0 })
    );
}

#[test]
fn unusable_keys() {
    let rsa = TestCa::root(KeyKind::Rsa2048, "RSA");
    assert!(matches!(
        DeviceKey::from_certificate_der(&rsa.der),
        Err(SignatureError::UnsupportedKey { .. })
    ));
    let ed = TestCa::root(KeyKind::Ed25519, "Ed");
    assert!(matches!(
        DeviceKey::from_certificate_der(&ed.der),
        Err(SignatureError::UnsupportedKey { .. })
    ));
    let p256 = TestCa::root(KeyKind::P256, "EC");
    assert_eq!(
        DeviceKey::from_certificate_der(&ca_with_off_curve_point(&p256)).unwrap_err(),
        SignatureError::InvalidKey { curve: Curve::P256 }
    );
    assert!(DeviceKey::from_certificate_der(b"not a cert").is_err());
    assert!(DeviceKey::from_sec1(Curve::P256, &[0x04; 65]).is_err());
    assert!(DeviceKey::from_sec1(Curve::P384, &[]).is_err());
}

#[test]
fn full_round_trip_with_replay() {
    let (dev, key) = device(KeyKind::P256);
    let t0 = Timestamp::from_unix(1_800_000_000);
    let random = [0x9e; 32];
    let issued = Challenge::issue("dev", random, t0, &ChallengePolicy { lifetime_secs: 30 });
    // The device answers over MQTT with the nonce and its SE's signature.
    let signature = dev.answer_direct(issued.nonce.as_bytes());
    let used = issued.redeem("dev", &random, t0.plus_secs(2)).unwrap();
    key.verify_challenge(
        issued.nonce.as_bytes(),
        &signature,
        SignatureFormat::Auto,
        DigestMode::Direct,
    )
    .unwrap();
    // The stored state now refuses a replay of the same answer.
    assert!(matches!(
        used.redeem("dev", &random, t0.plus_secs(3)),
        Err(ChallengeError::AlreadyUsed { .. })
    ));
    // An answer after expiry is refused even if never used.
    assert!(matches!(
        issued.redeem("dev", &random, t0.plus_secs(31)),
        Err(ChallengeError::Expired { .. })
    ));
    assert_eq!(
        ChallengeError::Expired {
            expires_at: t0,
            now: t0
        }
        .check(),
        "expired_nonce"
    );
}

#[test]
fn digest_mode_and_format_names() {
    for m in [DigestMode::Direct, DigestMode::Sha256, DigestMode::Sha384] {
        assert_eq!(DigestMode::parse(m.as_str()), Some(m));
    }
    assert_eq!(DigestMode::default(), DigestMode::Direct);
    assert_eq!(SignatureFormat::parse("raw"), Some(SignatureFormat::Raw));
    assert_eq!(DigestMode::parse("md5"), None);
}
