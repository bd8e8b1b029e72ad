//! The LoRaWAN uplink path's pure part, measured before the UDP pipeline is built on it (issue
//! target: ≥ 100,000 uplinks/s through the UDP path on this 2-core machine): a PUSH_DATA decoded
//! (semtech-udp), its frame parsed and MIC-verified (lrwn computes, we compare), the payload
//! decrypted. `cargo bench -p verifier --bench lorawan`; figures in docs/BENCHMARKS.md.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;
use verifier::lorawan::{UplinkMicKeys, decrypt_uplink_payload, parse, verify_join_request, verify_uplink};

fn bench(c: &mut Criterion) {
    let up = hex::decode("400403020180010001a694642615d6c3b582").unwrap();
    let join = hex::decode("0001010101010101010202020202020202030309b97b32").unwrap();
    let nwk_s_key = [2u8; 16];
    let app_s_key = [1u8; 16];
    let app_key: [u8; 16] = hex::decode("0102030405060708090a0b0c0d0e0f10")
        .unwrap()
        .try_into()
        .unwrap();
    let mut datagram = vec![2, 0x12, 0x34, 0x00, 1, 2, 3, 4, 5, 6, 7, 8];
    datagram.extend_from_slice(
        br#"{"rxpk":[{"tmst":3512348611,"chan":2,"rfch":0,"freq":868.1,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-35,"lsnr":5.1,"size":18,"data":"QAQDAgGAAQABppRkJhXWw7WC"}]}"#,
    );

    let mut g = c.benchmark_group("lorawan");
    g.bench_function("parse_frame", |b| b.iter(|| parse(black_box(&up)).unwrap()));
    g.bench_function("uplink_mic_1_0", |b| {
        b.iter(|| verify_uplink(black_box(&up), 1, UplinkMicKeys::V1_0 { nwk_s_key: &nwk_s_key }).unwrap())
    });
    g.bench_function("join_request_mic", |b| {
        b.iter(|| verify_join_request(black_box(&join), &app_key).unwrap())
    });
    g.bench_function("push_data_decode_verify_decrypt", |b| {
        b.iter(|| {
            let semtech_udp::Packet::PushData { rxpk, .. } = semtech_udp::decode(black_box(&datagram)).unwrap() else {
                unreachable!()
            };
            let up = verify_uplink(&rxpk[0].data, 1, UplinkMicKeys::V1_0 { nwk_s_key: &nwk_s_key }).unwrap();
            decrypt_uplink_payload(&app_s_key, &up).unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
