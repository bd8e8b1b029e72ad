//! Fuzz harness shared by the cargo-fuzz targets (`fuzz/`), the proptest no-panic tests and the
//! crash-regression replay. Each entry point takes arbitrary bytes and drives one network-facing
//! parser or verifier of `verifier`: raw, and as structured mutations of *valid* inputs so the
//! fuzzer gets past the DER outer layer quickly.
//!
//! Contract: no input may panic, and a verdict must be deterministic.

use crate::{KeyKind, Spec, TestCa, TestDevice, now};
use std::sync::LazyLock;
use verifier::Timestamp;
use verifier::challenge::{Challenge, ChallengePolicy, DeviceKey, DigestMode, SignatureFormat};
use verifier::x509::{
    Crl, ProvisioningCa, RegistrationCode, RevokedSerials, TrustStore, certificates_from_pem_or_der,
    check_ca_registration, crls_from_pem_or_der, describe_certificate,
};

/// A small world of valid inputs to mutate.
pub struct World {
    pub store: TrustStore,
    pub leaf: Vec<u8>,
    pub intermediate: Vec<u8>,
    pub stsafe_leaf: Vec<u8>,
    pub crl: Vec<u8>,
    pub ca: Vec<u8>,
    pub verification: Vec<u8>,
    pub code: String,
    pub device: TestDevice,
    pub device_key: DeviceKey,
    pub challenge: [u8; 32],
    pub signature_raw: Vec<u8>,
    pub signature_der: Vec<u8>,
    /// A genuine signed measurement and PSA tokens (current and legacy keys) over `challenge`.
    pub measurement_token: Vec<u8>,
    pub psa_token: Vec<u8>,
    pub psa_legacy_token: Vec<u8>,
    pub now: Timestamp,
}

pub static WORLD: LazyLock<World> = LazyLock::new(|| {
    let stsafe = TestCa::stsafe_root("STSAFE CA");
    let root = TestCa::root(KeyKind::P256, "Root");
    let int = root.intermediate(KeyKind::P384, "Factory", Some(0));
    let leaf = int.issue_device_with(
        KeyKind::P256,
        &[(rcgen::DnType::CommonName, "dev-1")],
        &Spec {
            serial: Some(vec![0x10, 0x01]),
            ..Spec::default()
        },
    );
    let stsafe_leaf = stsafe.issue_stsafe_device("eval3", &[0x02, 0x09, 0xB0, 0x84]);
    let crl = int.crl(&[&[0x10, 0x02]], "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z");
    let mut store = TrustStore::new();
    let mut serials = RevokedSerials::new();
    serials.insert(&[0x77]);
    store.add_ca(
        ProvisioningCa::from_der(&root.der)
            .expect("root")
            .with_revoked_serials(serials),
    );
    store.add_ca(ProvisioningCa::from_der(&stsafe.der).expect("stsafe root"));
    store.add_crl(Crl::from_der(&crl).expect("crl"));
    let code = RegistrationCode::from_random([7; 20]).as_str().to_owned();
    let verification = root.verification_certificate(&code);
    let challenge = [0x5c; 32];
    let signature_raw = stsafe_leaf.answer_direct(&challenge);
    let signature_der = stsafe_leaf.se_sign_digest_der(&challenge);
    let device_key = DeviceKey::from_certificate_der(&stsafe_leaf.der).expect("device key");
    let measurement_token = crate::attest::measurement(&stsafe_leaf, &challenge, "dev-1", &[0xd1; 32], "1.4.2");
    let psa_token = crate::attest::psa(&stsafe_leaf, &challenge, 0x3000, false);
    let psa_legacy_token = crate::attest::psa(&stsafe_leaf, &challenge, 0x3000, true);
    World {
        measurement_token,
        psa_token,
        psa_legacy_token,
        store,
        leaf: leaf.der.clone(),
        intermediate: int.der.clone(),
        stsafe_leaf: stsafe_leaf.der.clone(),
        crl,
        ca: root.der.clone(),
        verification,
        code,
        device: stsafe_leaf,
        device_key,
        challenge,
        signature_raw,
        signature_der,
        now: Timestamp::from(now()),
    }
});

/// Attestation evidence: signed measurements and PSA tokens, raw and as mutations of genuine
/// ones. A mutated token may only verify if what it says is exactly what the genuine one says
/// (the unsigned COSE framing may change; the claims may not).
pub fn attestation(data: &[u8]) {
    use verifier::attestation::{AppraisalPolicy, Evidence, appraise, verify_measurement, verify_psa_token};
    let w = &*WORLD;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = match mode % 5 {
        0 => rest.to_vec(),
        1 => mutate(&w.measurement_token, rest),
        2 => mutate(&w.psa_token, rest),
        3 => mutate(&w.psa_legacy_token, rest),
        _ => splice(&w.psa_token, rest),
    };
    if let Ok(m) = verify_measurement(&token, &w.device_key, &w.challenge, "dev-1") {
        let genuine = verify_measurement(&w.measurement_token, &w.device_key, &w.challenge, "dev-1").expect("genuine");
        assert_eq!(m, genuine, "forged measurement accepted");
        let _ = appraise(&Evidence::Measurement(m), &[], &AppraisalPolicy::default());
    }
    if let Ok(p) = verify_psa_token(&token, &w.device_key, &w.challenge) {
        let current = verify_psa_token(&w.psa_token, &w.device_key, &w.challenge).expect("genuine");
        let legacy = verify_psa_token(&w.psa_legacy_token, &w.device_key, &w.challenge).expect("genuine");
        assert!(p == current || p == legacy, "forged PSA token accepted");
        let _ = appraise(&Evidence::Psa(p), &[], &AppraisalPolicy::default());
    }
}

/// LoRaWAN frames: raw bytes and mutations of genuine ones (the public vectors). A mutated frame
/// may pass its MIC only if it is byte-for-byte the genuine frame.
pub fn lorawan(data: &[u8]) {
    use verifier::lorawan::{
        UplinkMicKeys, decrypt_uplink_f_opts, parse, peek_uplink, reconstruct_fcnt, verify_join_request, verify_uplink,
    };
    const JOIN: &str = "0001010101010101010202020202020202030309b97b32";
    const APP_KEY: [u8; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
    const UP: &str = "400403020180010001a694642615d6c3b582";
    const NWK_S_KEY: [u8; 16] = [2; 16];
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (join, up) = (hex_bytes(JOIN), hex_bytes(UP));
    let frame = match mode % 4 {
        0 => rest.to_vec(),
        1 => mutate(&join, rest),
        2 => mutate(&up, rest),
        _ => splice(&up, rest),
    };
    let _ = parse(&frame);
    if verify_join_request(&frame, &APP_KEY).is_ok() {
        assert_eq!(frame, join, "forged join-request accepted");
    }
    let fcnt = reconstruct_fcnt(Some(0), frame.get(6).copied().map_or(0, u16::from));
    // The pre-MIC header read never panics, and agrees with the full parse on what it reads.
    let header = peek_uplink(&frame);
    if let Ok(uplink) = verify_uplink(&frame, fcnt, UplinkMicKeys::V1_0 { nwk_s_key: &NWK_S_KEY }) {
        assert_eq!(frame, up, "forged uplink accepted");
        let header = header.expect("a verified uplink has a header");
        assert_eq!(hex_string(&header.dev_addr), uplink.dev_addr);
        assert_eq!(u32::from(header.fcnt16), uplink.fcnt & 0xffff);
        let _ = decrypt_uplink_f_opts(&NWK_S_KEY, &uplink);
    }
}

/// Sigfox uplink frames: raw bytes, mutations of genuine frames (every transmission), and the
/// same as hex text (odd lengths, with and without preamble). A frame whose UL-AUTH verifies
/// must be the genuine frame's packet; parsing never panics.
pub fn sigfox(data: &[u8]) {
    use verifier::sigfox::{Payload, encode_uplink, parse_uplink, parse_uplink_hex};
    const NAK: [u8; 16] = *b"fuzz-sigfox-nak!";
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let replica = usize::from(mode >> 4) % 3;
    let genuine = encode_uplink(
        &NAK,
        0x004D_33DB,
        0x0A23,
        Payload::Bytes(b"\xde\xad\xbe\xef\x01"),
        true,
        replica,
    )
    .expect("a genuine frame encodes");
    let frame = match mode % 8 {
        0 => rest.to_vec(),
        1 => mutate(&genuine, rest),
        2 => splice(&genuine, rest),
        4..=7 => return sigfox_callback(mode, rest),
        _ => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(up) = parse_uplink_hex(&text)
                && up.verify(&NAK).is_ok()
            {
                assert_eq!(
                    (up.device_id, up.seq_number),
                    (0x004D_33DB, 0x0A23),
                    "forged frame verified"
                );
            }
            return;
        }
    };
    if let Ok(up) = parse_uplink(&frame)
        && up.verify(&NAK).is_ok()
    {
        assert_eq!(up.payload, b"\xde\xad\xbe\xef\x01", "forged frame verified");
        assert_eq!((up.device_id, up.seq_number), (0x004D_33DB, 0x0A23));
    }
    let _ = parse_uplink_hex(&frame.iter().map(|b| format!("{b:02x}")).collect::<String>());
}

/// Sigfox backend callback bodies (JSON and form): raw, and mutations of genuine ones. Whatever
/// parses keeps the invariants the gateway relies on.
fn sigfox_callback(mode: u8, rest: &[u8]) {
    use verifier::sigfox::callback::{Encoding, parse};
    const JSON: &[u8] = br#"{"device":"4D33DB","time":1764590000,"data":"0102ab","seqNumber":4095,"ack":true,"duplicate":false,"snr":"18.37","rssi":-121.5,"station":"1E7A","deviceTypeId":"5f2a0c"}"#;
    const FORM: &[u8] = b"device=004D33DB&time=1764590000&data=cafe&seqNumber=0&ack=false&station=1E7A&rssi=-119.5";
    let (encoding, body) = match mode % 8 {
        4 => (Encoding::Json, mutate(JSON, rest)),
        5 => (Encoding::Form, mutate(FORM, rest)),
        6 => (Encoding::Json, splice(JSON, rest)),
        _ => (Encoding::Form, rest.to_vec()),
    };
    if let Ok(c) = parse(encoding, &body) {
        assert!(c.data.len() <= 12 && c.seq_number < 4096 && c.time >= 0);
        assert!(c.device_id.len() == 8 && c.device_id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(c.device_id.ends_with(&c.device.to_ascii_uppercase()));
    }
}

/// Semtech UDP datagrams: raw, and mutations of a genuine PUSH_DATA.
pub fn semtech_udp(data: &[u8]) {
    const PUSH: &[u8] = br#"{"rxpk":[{"tmst":3512348611,"chan":2,"rfch":0,"freq":868.1,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-35,"lsnr":5.1,"size":18,"data":"QAQDAgGAAQABppRkJhXWw7WC"}],"stat":{"rxnb":1}}"#;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut genuine = vec![2, 0x12, 0x34, 0x00, 1, 2, 3, 4, 5, 6, 7, 8];
    genuine.extend_from_slice(PUSH);
    let datagram = match mode % 3 {
        0 => rest.to_vec(),
        1 => mutate(&genuine, rest),
        _ => splice(&genuine, rest),
    };
    if let Ok(semtech_udp::Packet::PushData { rxpk, .. }) = semtech_udp::decode(&datagram) {
        for p in rxpk {
            assert!(p.data.len() <= semtech_udp::MAX_PHY_PAYLOAD);
            let _ = verifier::lorawan::parse(&p.data);
        }
    }
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Applies `edits` to `base`: each 3-byte chunk is (position hi, position lo, xor mask).
fn mutate(base: &[u8], edits: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    if out.is_empty() {
        return out;
    }
    for e in edits.chunks_exact(3) {
        let pos = usize::from(u16::from_be_bytes([e[0], e[1]])) % out.len();
        out[pos] ^= e[2];
    }
    out
}

/// Splices: keeps `base[..cut]` and appends `tail`, `cut` from the first two bytes.
fn splice(base: &[u8], data: &[u8]) -> Vec<u8> {
    let (cut, tail) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])) % (base.len() + 1), rest),
        _ => (base.len(), data),
    };
    [&base[..cut], tail].concat()
}

/// Chain validation, certificate/CRL parsing and PEM decoding.
pub fn chain(data: &[u8]) {
    let w = &*WORLD;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (leaf, ints): (Vec<u8>, Vec<Vec<u8>>) = match mode % 6 {
        0 => (rest.to_vec(), vec![]),
        1 => (mutate(&w.leaf, rest), vec![w.intermediate.clone()]),
        2 => (w.leaf.clone(), vec![mutate(&w.intermediate, rest)]),
        3 => (splice(&w.stsafe_leaf, rest), vec![]),
        4 => (w.leaf.clone(), vec![w.intermediate.clone(), rest.to_vec()]),
        _ => (mutate(&w.stsafe_leaf, rest), vec![w.leaf.clone()]),
    };
    let refs: Vec<&[u8]> = ints.iter().map(Vec::as_slice).collect();
    let first = w.store.verify_device(&leaf, &refs, w.now);
    let again = w.store.verify_device(&leaf, &refs, w.now);
    assert_eq!(first, again, "verdicts must be deterministic");
    if let Err(e) = &first {
        // Every rejection renders and serializes.
        let _ = e.to_string();
        let _ = e.check();
    }
    let _ = describe_certificate(rest);
    let _ = certificates_from_pem_or_der(rest);
    let _ = crls_from_pem_or_der(rest);
    if let Ok(crl) = Crl::from_der(&mutate(&w.crl, rest)) {
        let _ = crl.check_issued_by(&w.ca);
    }
    let _ = Crl::from_der(rest);
}

/// Challenge signatures and nonce redemption.
pub fn challenge(data: &[u8]) {
    let w = &*WORLD;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let format = [SignatureFormat::Raw, SignatureFormat::Der, SignatureFormat::Auto][usize::from(mode % 3)];
    let digest = [DigestMode::Direct, DigestMode::Sha256, DigestMode::Sha384][usize::from((mode / 3) % 3)];
    let (challenge, signature): (Vec<u8>, Vec<u8>) = match (mode / 9) % 5 {
        0 => (w.challenge.to_vec(), rest.to_vec()),
        1 => (w.challenge.to_vec(), mutate(&w.signature_raw, rest)),
        2 => (w.challenge.to_vec(), splice(&w.signature_der, rest)),
        3 => (mutate(&w.challenge, rest), w.signature_raw.clone()),
        _ => {
            let (c, s) = rest.split_at(rest.len().min(32));
            (c.to_vec(), s.to_vec())
        }
    };
    let verdict = w.device_key.verify_challenge(&challenge, &signature, format, digest);
    // Only the genuine answer in the right mode may pass.
    if verdict.is_ok() {
        assert!(
            digest == DigestMode::Direct && challenge == w.challenge,
            "forged answer accepted"
        );
    }
    let _ = DeviceKey::from_certificate_der(rest);
    let _ = DeviceKey::from_spki_der(rest);
    let issued = Challenge::issue("dev-1", w.challenge, w.now, &ChallengePolicy::default());
    let _ = issued.redeem("dev-1", rest, w.now);
}

/// CA registration (proof of possession and key checks).
pub fn registration(data: &[u8]) {
    let w = &*WORLD;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (ca, proof) = match mode % 4 {
        0 => (rest.to_vec(), w.verification.clone()),
        1 => (mutate(&w.ca, rest), w.verification.clone()),
        2 => (w.ca.clone(), mutate(&w.verification, rest)),
        _ => (w.ca.clone(), rest.to_vec()),
    };
    let code = RegistrationCode::from_issued(&w.code);
    if let Err(e) = check_ca_registration(&ca, &proof, &code, w.now) {
        let _ = e.to_string();
    }
}

/// The genuine answer of the world's device (for tests of the harness itself).
pub fn genuine_answer() -> Vec<u8> {
    WORLD.device.answer_direct(&WORLD.challenge)
}

/// A valid MQTT 3.1.1 CONNECT (client id `d1`, clean session, keep-alive 30 s).
const CONNECT_V4: &[u8] = &[
    0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x1E, 0x00, 0x02, b'd', b'1',
];
/// A valid MQTT 5 CONNECT (client id `d1`, clean start, no properties).
const CONNECT_V5: &[u8] = &[
    0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x1E, 0x00, 0x00, 0x02, b'd', b'1',
];

/// The MQTT decoder on hostile bytes: the CONNECT path raw (first byte 0), or after a valid
/// v3.1.1 / v5 CONNECT so the fuzzer reaches every later packet; fed in pieces of varying size
/// to exercise "need more bytes". Whatever decodes is re-encoded where the server would answer.
pub fn mqtt(data: &[u8]) {
    use mqtt_codec::{Decoder, Encoder, Incoming, Qos};
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut stream = match mode % 3 {
        0 => Vec::new(),
        1 => CONNECT_V4.to_vec(),
        _ => CONNECT_V5.to_vec(),
    };
    stream.extend_from_slice(rest);
    let step = usize::from(mode / 3).max(1);
    let mut decoder = Decoder::new(4096);
    let mut buf = bytes::BytesMut::new();
    for chunk in stream.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(packet)) => {
                    let Some(version) = decoder.version() else { continue };
                    let enc = Encoder { version };
                    let mut out = bytes::BytesMut::new();
                    match packet {
                        Incoming::Publish(p) => {
                            enc.puback(p.pkid, &mut out);
                            enc.publish(&p.topic, &p.payload, Qos::AtLeastOnce, p.pkid.max(1), p.dup, &mut out);
                        }
                        Incoming::Subscribe { pkid, filters } => {
                            let granted: Vec<_> = filters
                                .iter()
                                .map(|f| (f.qos == 0).then_some(Qos::AtMostOnce))
                                .collect();
                            enc.suback(pkid, &granted, &mut out);
                        }
                        Incoming::Unsubscribe { pkid, filters } => enc.unsuback(pkid, filters.len(), &mut out),
                        _ => enc.pingresp(&mut out),
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
