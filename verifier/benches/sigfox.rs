//! The Sigfox frame path's pure part: a submitted frame (hex, as `POST /api/v1/sigfox/frames`
//! receives it) parsed with its CRC checked, then its UL-AUTH verified (AES-128, two CBC blocks
//! for a 12-byte payload); a replica, whose convolutional code is undone first; a backend callback
//! body parsed; a downlink frame built (DL-AUTH, CRC-8, BCH, whitening) and decoded.
//! `cargo bench -p verifier --bench sigfox`; figures in docs/BENCHMARKS.md.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;
use verifier::sigfox::{Payload, encode_uplink, parse_uplink, parse_uplink_hex};

fn bench(c: &mut Criterion) {
    let nak = [0x47; 16];
    let payload = *b"temp=21.5;ok";
    let first = encode_uplink(&nak, 0x004D_33DB, 0x123, Payload::Bytes(&payload), false, 0).unwrap();
    let replica = encode_uplink(&nak, 0x004D_33DB, 0x123, Payload::Bytes(&payload), false, 2).unwrap();
    let hex = hex::encode(&first);
    let mut g = c.benchmark_group("sigfox");
    g.bench_function("parse_hex_and_verify_12_bytes", |b| {
        b.iter(|| parse_uplink_hex(black_box(&hex)).unwrap().verify(&nak).unwrap())
    });
    g.bench_function("parse_replica_and_verify_12_bytes", |b| {
        b.iter(|| parse_uplink(black_box(&replica)).unwrap().verify(&nak).unwrap())
    });
    let body = br#"{"device":"4D33DB","time":1764590000,"data":"0102030405060708090a0b0c","seqNumber":4095,"ack":true,"duplicate":false,"snr":"18.37","rssi":-121.5,"station":"1E7A","deviceTypeId":"5f2a0c6b8e2a4b0001c0ffee"}"#;
    g.bench_function("parse_callback_json", |b| {
        b.iter(|| {
            verifier::sigfox::callback::parse(verifier::sigfox::callback::Encoding::Json, black_box(body)).unwrap()
        })
    });
    let dl = [0xDE, 0xAD, 0xBE, 0xEF, 0, 1, 2, 3];
    g.bench_function("encode_downlink", |b| {
        b.iter(|| verifier::sigfox::downlink::encode_downlink(&nak, 0x004D_33DB, black_box(0x123), &dl))
    });
    let frame = verifier::sigfox::downlink::encode_downlink(&nak, 0x004D_33DB, 0x123, &dl);
    g.bench_function("decode_downlink", |b| {
        b.iter(|| verifier::sigfox::downlink::decode_downlink(black_box(&frame), &nak, 0x004D_33DB, 0x123).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
