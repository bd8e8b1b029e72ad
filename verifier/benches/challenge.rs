//! Challenge signature verification (target: ≥ 15,000/s on one core, i.e. ≤ 66 µs each).
//! `cargo bench -p verifier --bench challenge`; figures in docs/BENCHMARKS.md.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use fleetward_test_support::{KeyKind, TestCa};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use std::hint::black_box;
use std::time::Duration;
use verifier::challenge::{DeviceKey, DigestMode, SignatureFormat};

fn bench(c: &mut Criterion) {
    let ca = TestCa::root(KeyKind::P256, "Root");
    let dev = ca.issue_device(KeyKind::P256, "dev");
    let dev384 = ca.issue_device(KeyKind::P384, "dev384");
    let challenge = [0x3cu8; 32];
    let key = DeviceKey::from_certificate_der(&dev.der).unwrap();
    let key384 = DeviceKey::from_certificate_der(&dev384.der).unwrap();
    let raw = dev.answer_direct(&challenge);
    let der = dev.se_sign_digest_der(&challenge);
    let hashed = dev.answer_sha256(&challenge);
    let raw384 = dev384.answer_direct(&challenge);

    let mut g = c.benchmark_group("challenge");
    g.bench_function("p256_direct_raw", |b| {
        b.iter(|| {
            key.verify_challenge(
                black_box(&challenge),
                black_box(&raw),
                SignatureFormat::Raw,
                DigestMode::Direct,
            )
            .unwrap()
        })
    });
    g.bench_function("p256_direct_der", |b| {
        b.iter(|| {
            key.verify_challenge(
                black_box(&challenge),
                black_box(&der),
                SignatureFormat::Der,
                DigestMode::Direct,
            )
            .unwrap()
        })
    });
    g.bench_function("p256_sha256_raw", |b| {
        b.iter(|| {
            key.verify_challenge(
                black_box(&challenge),
                black_box(&hashed),
                SignatureFormat::Raw,
                DigestMode::Sha256,
            )
            .unwrap()
        })
    });
    g.bench_function("p384_direct_raw", |b| {
        b.iter(|| {
            key384
                .verify_challenge(
                    black_box(&challenge),
                    black_box(&raw384),
                    SignatureFormat::Raw,
                    DigestMode::Direct,
                )
                .unwrap()
        })
    });
    // Cold path: the key parsed from the device certificate on every call.
    g.bench_function("p256_direct_raw_parse_cert_each_time", |b| {
        b.iter(|| {
            let key = DeviceKey::from_certificate_der(black_box(&dev.der)).unwrap();
            key.verify_challenge(&challenge, &raw, SignatureFormat::Raw, DigestMode::Direct)
                .unwrap()
        })
    });
    // Peer: the pure-Rust verifier (RustCrypto p256) on the same prehash and signature.
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(rcgen::PublicKeyData::der_bytes(&dev.key)).unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&raw).unwrap();
    assert!(vk.verify_prehash(&challenge, &sig).is_ok());
    g.bench_function("peer_rustcrypto_p256_prehash", |b| {
        b.iter(|| vk.verify_prehash(black_box(&challenge), black_box(&sig)).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
