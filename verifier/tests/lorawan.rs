//! LoRaWAN rules against public known-answer vectors (test-support/fixtures/vectors/
//! lorawan_vectors.json: ChirpStack's lrwn docs, brocaar/lorawan and lora-rs test suites, each
//! vector naming its source), plus the refusals: a flipped bit, a wrong key, a wrong counter, a
//! 1.1 frame checked as 1.0, hostile bytes.

use proptest::prelude::*;
use serde_json::Value;
use verifier::lorawan::{UplinkMicKeys, decrypt_uplink_payload, reconstruct_fcnt, verify_join_request, verify_uplink};

fn vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../test-support/fixtures/vectors/lorawan_vectors.json"
    ))
    .expect("vectors file");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    v["vectors"].as_array().expect("vectors").clone()
}

fn vector(id: &str) -> Value {
    vectors().into_iter().find(|v| v["id"] == id).expect("vector present")
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

fn key(v: &Value) -> [u8; 16] {
    bytes(v).try_into().expect("16-byte key")
}

#[test]
fn join_request_mic_1_0() {
    let v = vector("lrwn-joinreq-mic-1.0");
    let phy = bytes(&v["expected"]["phy_payload"]);
    let app_key = key(&v["inputs"]["app_key"]);
    let jr = verify_join_request(&phy, &app_key).expect("MIC verifies");
    assert_eq!(jr.dev_nonce, v["inputs"]["dev_nonce"].as_u64().unwrap() as u16);
    assert_eq!(jr.join_eui, v["inputs"]["join_eui"].as_str().unwrap());
    assert_eq!(jr.dev_eui, v["inputs"]["dev_eui"].as_str().unwrap());
    // A flipped MIC bit, a flipped payload bit, another key.
    for i in [phy.len() - 1, 5] {
        let mut bad = phy.clone();
        bad[i] ^= 0x01;
        assert_eq!(verify_join_request(&bad, &app_key).unwrap_err().check(), "mic_mismatch");
    }
    let mut other = app_key;
    other[0] ^= 0x80;
    assert_eq!(verify_join_request(&phy, &other).unwrap_err().check(), "mic_mismatch");
}

#[test]
fn data_uplink_1_0_mic_and_payload() {
    let v = vector("uplink-1.0-hello");
    let phy = bytes(&v["inputs"]["phy_payload"]);
    let nwk_s_key = key(&v["inputs"]["nwk_s_key"]);
    let fcnt = reconstruct_fcnt(None, 1);
    assert_eq!(u64::from(fcnt), v["inputs"]["fcnt32"].as_u64().unwrap());
    let up = verify_uplink(&phy, fcnt, UplinkMicKeys::V1_0 { nwk_s_key: &nwk_s_key }).expect("MIC verifies");
    assert_eq!(up.dev_addr, v["inputs"]["dev_addr_msb"].as_str().unwrap());
    assert_eq!(u64::from(up.f_port.unwrap()), v["expected"]["f_port"].as_u64().unwrap());
    let plain = decrypt_uplink_payload(&key(&v["inputs"]["app_s_key"]), &up).unwrap();
    assert_eq!(
        plain,
        v["expected"]["frm_payload_plain_utf8"].as_str().unwrap().as_bytes()
    );
    // The same 16 bits in another 65,536 epoch do not verify.
    assert_eq!(
        verify_uplink(&phy, 0x1_0001, UplinkMicKeys::V1_0 { nwk_s_key: &nwk_s_key })
            .unwrap_err()
            .check(),
        "mic_mismatch"
    );
    // A counter that does not end in the transmitted bits is refused before any MIC.
    assert_eq!(
        verify_uplink(&phy, 2, UplinkMicKeys::V1_0 { nwk_s_key: &nwk_s_key })
            .unwrap_err()
            .check(),
        "malformed"
    );
    // RFU bits set in MHDR lie outside what lrwn's MIC covers: refused as non-canonical (found
    // by fuzzing; the MIC of the canonical frame would otherwise vouch for them).
    let mut rfu = phy.clone();
    rfu[0] |= 0x10;
    assert_eq!(
        verify_uplink(&rfu, 1, UplinkMicKeys::V1_0 { nwk_s_key: &nwk_s_key })
            .unwrap_err()
            .check(),
        "malformed"
    );
    // A join-request is not an uplink and vice versa.
    assert_eq!(
        verify_join_request(&phy, &nwk_s_key).unwrap_err().check(),
        "wrong_message_type"
    );
}

#[test]
fn data_uplink_1_1_mic_with_and_without_ack() {
    let v = vector("brocaar-uplink-1.1");
    let i = &v["inputs"];
    let (f, s) = (key(&i["f_nwk_s_int_key"]), key(&i["s_nwk_s_int_key"]));
    let keys = |conf_fcnt: u32| UplinkMicKeys::V1_1 {
        f_nwk_s_int_key: &f,
        s_nwk_s_int_key: &s,
        conf_fcnt,
        tx_dr: i["tx_dr"].as_u64().unwrap() as u8,
        tx_ch: i["tx_ch"].as_u64().unwrap() as u8,
    };
    let conf = i["conf_fcnt"].as_u64().unwrap() as u32;
    let no_ack = bytes(&i["phy_payload_no_ack"]);
    let ack = bytes(&i["phy_payload_ack"]);
    let up = verify_uplink(&no_ack, 1, keys(conf)).expect("1.1 MIC verifies");
    assert!(!up.ack);
    assert!(verify_uplink(&ack, 1, keys(conf)).expect("ACK frame verifies").ack);
    // With ACK, ConfFCnt is in B1: another value fails; without ACK it does not matter.
    assert_eq!(
        verify_uplink(&ack, 1, keys(conf + 1)).unwrap_err().check(),
        "mic_mismatch"
    );
    assert!(verify_uplink(&no_ack, 1, keys(conf + 1)).is_ok());
    // Another channel or data rate (B1) fails.
    let other_ch = UplinkMicKeys::V1_1 {
        f_nwk_s_int_key: &f,
        s_nwk_s_int_key: &s,
        conf_fcnt: conf,
        tx_dr: 2,
        tx_ch: 4,
    };
    assert_eq!(verify_uplink(&no_ack, 1, other_ch).unwrap_err().check(), "mic_mismatch");
    // A 1.1 frame checked as 1.0 with either key fails.
    assert!(verify_uplink(&no_ack, 1, UplinkMicKeys::V1_0 { nwk_s_key: &f }).is_err());
    let plain = decrypt_uplink_payload(&key(&i["app_s_key"]), &up).unwrap();
    assert_eq!(
        plain,
        v["expected"]["frm_payload_plain_utf8"].as_str().unwrap().as_bytes()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Hostile bytes get a typed error, never a panic.
    #[test]
    fn hostile_frames_never_panic(phy in proptest::collection::vec(any::<u8>(), 0..300), fcnt in any::<u32>()) {
        let k = [7u8; 16];
        let _ = verify_join_request(&phy, &k);
        let _ = verify_uplink(&phy, fcnt, UplinkMicKeys::V1_0 { nwk_s_key: &k });
        let _ = verify_uplink(&phy, fcnt, UplinkMicKeys::V1_1 {
            f_nwk_s_int_key: &k, s_nwk_s_int_key: &k, conf_fcnt: 0, tx_dr: 0, tx_ch: 0,
        });
    }
}

#[test]
fn join_accept_and_session_keys_match_the_spec_formulas() {
    use verifier::lorawan::{JoinAcceptParams, JoinRequest, MacVersion, RootKeys, accept_join};
    let cases: Vec<Value> = vectors()
        .into_iter()
        .filter(|v| v["category"] == "join_accept_and_session_keys")
        .collect();
    assert_eq!(cases.len(), 3);
    for v in cases {
        let i = &v["inputs"];
        let e = &v["expected"];
        let version = MacVersion::parse(i["mac_version"].as_str().unwrap()).unwrap();
        let root = RootKeys {
            app_key: key(&i["app_key"]),
            nwk_key: i["nwk_key"].as_str().map(|_| key(&i["nwk_key"])),
        };
        let request = JoinRequest {
            join_eui: i["join_eui"].as_str().unwrap().into(),
            dev_eui: i["dev_eui"].as_str().unwrap().into(),
            dev_nonce: i["dev_nonce"].as_u64().unwrap() as u16,
        };
        let arr = |v: &Value| bytes(v);
        let params = JoinAcceptParams {
            join_nonce: i["join_nonce"].as_u64().unwrap() as u32,
            net_id: arr(&i["net_id"]).try_into().unwrap(),
            dev_addr: arr(&i["dev_addr"]).try_into().unwrap(),
            rx1_dr_offset: i["rx1_dr_offset"].as_u64().unwrap() as u8,
            rx2_dr: i["rx2_dr"].as_u64().unwrap() as u8,
            rx_delay: i["rx_delay"].as_u64().unwrap() as u8,
            cflist: i["cflist"].as_str().map(|_| arr(&i["cflist"]).try_into().unwrap()),
        };
        let ja = accept_join(version, &root, &request, &params).unwrap_or_else(|e| panic!("{}: {e}", v["id"]));
        let id = v["id"].as_str().unwrap();
        assert_eq!(
            hex::encode(&ja.phy_payload),
            e["phy_payload"].as_str().unwrap(),
            "{id}: join-accept"
        );
        assert_eq!(
            hex::encode(ja.session.app_s_key),
            e["app_s_key"].as_str().unwrap(),
            "{id}: AppSKey"
        );
        assert_eq!(
            hex::encode(ja.session.f_nwk_s_int_key),
            e["f_nwk_s_int_key"].as_str().unwrap(),
            "{id}"
        );
        assert_eq!(
            hex::encode(ja.session.s_nwk_s_int_key),
            e["s_nwk_s_int_key"].as_str().unwrap(),
            "{id}"
        );
        assert_eq!(
            hex::encode(ja.session.nwk_s_enc_key),
            e["nwk_s_enc_key"].as_str().unwrap(),
            "{id}"
        );
        if version.is_1_1() {
            assert_eq!(
                hex::encode(ja.js_int_key.unwrap()),
                e["js_int_key"].as_str().unwrap(),
                "{id}"
            );
            assert_eq!(
                hex::encode(ja.js_enc_key.unwrap()),
                e["js_enc_key"].as_str().unwrap(),
                "{id}"
            );
        }
    }
}

#[test]
fn join_nonce_must_increase() {
    use verifier::lorawan::check_join_nonce;
    assert!(check_join_nonce(None, 0).is_ok());
    assert!(check_join_nonce(Some(4), 5).is_ok());
    assert_eq!(
        check_join_nonce(Some(5), 5).unwrap_err().check(),
        "join_nonce_not_increasing"
    );
    assert!(check_join_nonce(Some(5), 0x0100_0000).is_err());
}

/// LoRaWAN 1.1 uplink by an independent implementation (lora-packet): the two-key MIC binds
/// TxDr/TxCh, FOpts are encrypted with NwkSEncKey (1.1 errata block), the counter is past 16 bits.
#[test]
fn uplink_1_1_fopts_from_lora_packet() {
    use verifier::lorawan::{decrypt_uplink_f_opts, peek_uplink};
    let v = vector("lora-packet-uplink-1.1-fopts");
    let i = &v["inputs"];
    let phy = bytes(&i["phy_payload"]);
    let (f, s, e, a) = (
        key(&i["f_nwk_s_int_key"]),
        key(&i["s_nwk_s_int_key"]),
        key(&i["nwk_s_enc_key"]),
        key(&i["app_s_key"]),
    );
    let fcnt = i["fcnt32"].as_u64().unwrap() as u32;
    let keys = |tx_dr: u8, tx_ch: u8| UplinkMicKeys::V1_1 {
        f_nwk_s_int_key: &f,
        s_nwk_s_int_key: &s,
        conf_fcnt: 0,
        tx_dr,
        tx_ch,
    };
    let header = peek_uplink(&phy).unwrap();
    assert_eq!((header.dev_addr, header.confirmed), ([0x48, 0, 0, 1], true));
    assert_eq!(reconstruct_fcnt(Some(0xffff), header.fcnt16), fcnt);
    let up = verify_uplink(&phy, fcnt, keys(3, 5)).expect("MIC verifies");
    assert_eq!(up.f_port, Some(10));
    assert!(up.confirmed);
    assert_eq!(
        hex::encode(decrypt_uplink_f_opts(&e, &up).unwrap()),
        v["expected"]["f_opts_plain"]
    );
    assert_eq!(
        decrypt_uplink_payload(&a, &up).unwrap(),
        v["expected"]["frm_payload_plain_utf8"].as_str().unwrap().as_bytes()
    );
    // The MIC binds the data rate, the channel and the full counter.
    for (dr, ch) in [(2, 5), (3, 4)] {
        assert_eq!(
            verify_uplink(&phy, fcnt, keys(dr, ch)).unwrap_err().check(),
            "mic_mismatch"
        );
    }
    assert_eq!(
        verify_uplink(&phy, fcnt & 0xffff, keys(3, 5)).unwrap_err().check(),
        "mic_mismatch"
    );
    // Checked as 1.0 (one key over B0 only), it fails.
    assert_eq!(
        verify_uplink(&phy, fcnt, UplinkMicKeys::V1_0 { nwk_s_key: &f })
            .unwrap_err()
            .check(),
        "mic_mismatch"
    );
}

#[test]
fn uplink_header_is_read_without_trusting_it() {
    use verifier::lorawan::peek_uplink;
    assert_eq!(peek_uplink(&[]).unwrap_err().check(), "malformed");
    // A join-request (MType 000) and a downlink (011) are not uplinks.
    let join = bytes(&vector("lrwn-joinreq-mic-1.0")["expected"]["phy_payload"]);
    assert_eq!(peek_uplink(&join).unwrap_err().check(), "wrong_message_type");
    assert_eq!(peek_uplink(&[0x60; 12]).unwrap_err().check(), "wrong_message_type");
    assert_eq!(peek_uplink(&[0x40; 11]).unwrap_err().check(), "malformed");
    let h = peek_uplink(&bytes(&vector("uplink-1.0-hello")["inputs"]["phy_payload"])).unwrap();
    assert_eq!((h.dev_addr, h.fcnt16, h.confirmed), ([1, 2, 3, 4], 1, false));
}
