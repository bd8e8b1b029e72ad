//! Device chain verification: what every mTLS handshake (and every `fleetward verify chain`)
//! costs. `cargo bench -p verifier --bench chain`; figures in docs/BENCHMARKS.md.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use fleetward_test_support::{KeyKind, TestCa, now};
use std::hint::black_box;
use std::time::Duration;
use verifier::Timestamp;
use verifier::x509::{ProvisioningCa, TrustStore};

fn store(cas: &[&TestCa]) -> TrustStore {
    let mut s = TrustStore::new();
    for ca in cas {
        s.add_ca(ProvisioningCa::from_der(&ca.der).unwrap());
    }
    s
}

fn bench(c: &mut Criterion) {
    let at = Timestamp::from(now());
    let mut g = c.benchmark_group("chain");

    // Depth 2: STSAFE device ← STSAFE root (the field's common case).
    let stsafe = TestCa::stsafe_root("STSAFE CA");
    let device = stsafe.issue_stsafe_device("eval3", &[0x02, 0x09, 0xB0, 0x84, 0x61, 0x59]);
    let s = store(&[&stsafe]);
    assert!(s.verify_device(&device.der, &[], at).is_ok());
    g.bench_function("depth2_stsafe_p256", |b| {
        b.iter(|| s.verify_device(black_box(&device.der), &[], at).unwrap())
    });

    // Depth 2 on the real thing: an STSAFE-A110 certificate ← ST's production CA.
    let read = |f: &str| {
        let path = format!("{}/../examples/stsafe-a110/{f}", env!("CARGO_MANIFEST_DIR"));
        verifier::x509::certificates_from_pem_or_der(&std::fs::read(path).unwrap()).unwrap()[0].to_vec()
    };
    let (st_root, st_dev) = (
        read("stm-stsafe-a-prod-ca-01.pem"),
        read("eval3-0209B0846159E439520139.pem"),
    );
    let mut st = TrustStore::new();
    st.add_ca(ProvisioningCa::from_der(&st_root).unwrap());
    assert!(st.verify_device(&st_dev, &[], at).is_ok());
    g.bench_function("depth2_real_stsafe_a110", |b| {
        b.iter(|| st.verify_device(black_box(&st_dev), &[], at).unwrap())
    });

    // Depth 3: device ← intermediate (sent by the device) ← root, all P-256.
    let root = TestCa::root(KeyKind::P256, "Root");
    let int = root.intermediate(KeyKind::P256, "Factory", None);
    let dev3 = int.issue_device(KeyKind::P256, "dev-3");
    let s3 = store(&[&root]);
    assert!(s3.verify_device(&dev3.der, &[&int.der], at).is_ok());
    g.bench_function("depth3_p256_intermediate_sent", |b| {
        b.iter(|| s3.verify_device(black_box(&dev3.der), &[&int.der], at).unwrap())
    });

    // Depth 3 with an RSA-3072 operator root (RSA verify is cheap, P-256 is not).
    let rsa_root = TestCa::root(KeyKind::Rsa3072, "RSA Root");
    let rsa_int = rsa_root.intermediate(KeyKind::P256, "Factory", None);
    let dev_rsa = rsa_int.issue_device(KeyKind::P256, "dev-r");
    let s_rsa = store(&[&rsa_root]);
    g.bench_function("depth3_rsa3072_root", |b| {
        b.iter(|| {
            s_rsa
                .verify_device(black_box(&dev_rsa.der), &[&rsa_int.der], at)
                .unwrap()
        })
    });

    // The rejection path costs more (diagnosis re-checks links); attackers choose it.
    let impostor = TestCa::root(KeyKind::P256, "Root");
    let fake = impostor.issue_device(KeyKind::P256, "fake");
    assert!(s3.verify_device(&fake.der, &[], at).is_err());
    g.bench_function("rejected_bad_signature", |b| {
        b.iter(|| s3.verify_device(black_box(&fake.der), &[], at).unwrap_err())
    });
    let foreign = TestCa::root(KeyKind::P256, "Foreign").issue_device(KeyKind::P256, "x");
    g.bench_function("rejected_unknown_issuer", |b| {
        b.iter(|| s3.verify_device(black_box(&foreign.der), &[], at).unwrap_err())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
