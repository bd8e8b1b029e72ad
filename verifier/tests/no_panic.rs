//! No input panics: property tests over the same harness the cargo-fuzz targets drive
//! (`fleetward_test_support::fuzz`), and a replay of every input the fuzzers ever crashed on
//! (`fuzz/regressions/<target>/*`).
#![allow(clippy::unwrap_used)]

use fleetward_test_support::fuzz;
use proptest::prelude::*;
use std::path::Path;
use verifier::challenge::{DigestMode, SignatureFormat};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, .. ProptestConfig::default() })]

    #[test]
    fn chain_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
        fuzz::chain(&data);
    }

    #[test]
    fn challenge_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        fuzz::challenge(&data);
    }

    #[test]
    fn attestation_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzz::attestation(&data);
    }

    #[test]
    fn lorawan_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzz::lorawan(&data);
    }

    #[test]
    fn sigfox_never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
        fuzz::sigfox(&data);
    }

    #[test]
    fn semtech_udp_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzz::semtech_udp(&data);
    }

    #[test]
    fn registration_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
        fuzz::registration(&data);
    }

    /// Any single-byte change to a valid device certificate is either still the same
    /// certificate semantically (a no-op) or refused; it is never accepted as someone else.
    #[test]
    fn mutated_device_certificate_never_changes_identity(pos in 0usize..2000, mask in 1u8..=255) {
        let w = &*fuzz::WORLD;
        let mut der = w.stsafe_leaf.clone();
        let pos = pos % der.len();
        der[pos] ^= mask;
        if let Ok(v) = w.store.verify_device(&der, &[], w.now) {
            prop_assert_eq!(v.device_id.as_str(), "eval3-0209B084");
        }
    }

    /// Any single-byte change to the SE's answer is refused.
    #[test]
    fn mutated_signature_is_refused(pos in 0usize..64, mask in 1u8..=255) {
        let w = &*fuzz::WORLD;
        let mut sig = w.signature_raw.clone();
        sig[pos] ^= mask;
        prop_assert!(w.device_key.verify_challenge(&w.challenge, &sig, SignatureFormat::Raw, DigestMode::Direct).is_err());
    }
}

#[test]
fn harness_accepts_the_genuine_answer() {
    // The properties above only mean something if the unmutated inputs pass.
    let w = &*fuzz::WORLD;
    assert!(w.store.verify_device(&w.stsafe_leaf, &[], w.now).is_ok());
    assert!(w.store.verify_device(&w.leaf, &[&w.intermediate], w.now).is_ok());
    let sig = fuzz::genuine_answer();
    assert!(
        w.device_key
            .verify_challenge(&w.challenge, &sig, SignatureFormat::Raw, DigestMode::Direct)
            .is_ok()
    );
}

#[test]
fn fuzz_regressions_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut replayed = 0;
    for (target, run) in [
        ("chain", fuzz::chain as fn(&[u8])),
        ("challenge", fuzz::challenge),
        ("registration", fuzz::registration),
        ("attestation", fuzz::attestation),
        ("lorawan", fuzz::lorawan),
        ("semtech_udp", fuzz::semtech_udp),
        ("sigfox", fuzz::sigfox),
    ] {
        let Ok(dir) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for entry in dir {
            let path = entry.unwrap().path();
            if path.is_file() {
                run(&std::fs::read(&path).unwrap());
                replayed += 1;
            }
        }
    }
    // The directory holds at least the seed inputs checked in with it.
    assert!(replayed >= 3, "fuzz/regressions/* should hold inputs; found {replayed}");
}
