//! Attestation evidence: verify + appraise a signed measurement and a PSA token (the crypto is
//! one P-256 verify; the rest is COSE/CBOR parsing and reference matching).
//! `cargo bench -p verifier --bench attestation`; figures in docs/BENCHMARKS.md.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use fleetward_test_support::attest;
use fleetward_test_support::{KeyKind, TestCa};
use std::hint::black_box;
use std::time::Duration;
use verifier::attestation::{
    AppraisalPolicy, Evidence, ReferenceStatus, ReferenceValue, appraise, verify_measurement, verify_psa_token,
};
use verifier::challenge::DeviceKey;

fn bench(c: &mut Criterion) {
    let ca = TestCa::root(KeyKind::P256, "Root");
    let dev = ca.issue_device(KeyKind::P256, "dev");
    let key = DeviceKey::from_certificate_der(&dev.der).unwrap();
    let nonce = [0x3cu8; 32];
    let measurement = attest::measurement(&dev, &nonce, "dev", &[0xd1; 32], "1.4.2");
    let psa = attest::psa(&dev, &nonce, 0x3000, false);
    // 200 reference values, the matching ones last.
    let mut refs: Vec<ReferenceValue> = (0..198u8)
        .map(|i| ReferenceValue {
            name: format!("fw-{i}"),
            version: "1.0.0".into(),
            digest: vec![i; 32],
            signer_id: None,
            status: ReferenceStatus::Allowed,
        })
        .collect();
    for (name, version, digest) in [("BL", "0.2.0", 0xb1u8), ("sensor-fw", "1.4.2", 0xd1)] {
        refs.push(ReferenceValue {
            name: name.into(),
            version: version.into(),
            digest: vec![digest; 32],
            signer_id: None,
            status: ReferenceStatus::Allowed,
        });
    }
    let policy = AppraisalPolicy::default();

    let mut g = c.benchmark_group("attestation");
    g.bench_function("measurement_verify_appraise", |b| {
        b.iter(|| {
            let m = verify_measurement(black_box(&measurement), &key, &nonce, "dev").unwrap();
            appraise(&Evidence::Measurement(m), &refs, &policy).unwrap()
        })
    });
    g.bench_function("psa_token_verify_appraise", |b| {
        b.iter(|| {
            let p = verify_psa_token(black_box(&psa), &key, &nonce).unwrap();
            appraise(&Evidence::Psa(p), &refs, &policy).unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
