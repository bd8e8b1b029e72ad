//! The join server's logic against the registry: accepted joins store a sealed session under a
//! DevAddr in the NetID's block; a replayed join-request, a wrong MIC, an unknown DevEUI and an
//! ABP device are refused with their LoRaWAN Backend Interfaces result codes.
#![allow(clippy::unwrap_used)]

mod common;

use gateway::lorawan::join::{JoinRefusal, JoinServerSettings, join};
use registry::{NewAbpDevice, NewLorawanDevice};

/// The public lrwn join-request vector: AppKey 0102…10, JoinEUI 0101…, DevEUI 0202…, DevNonce 771.
const JOIN_REQUEST: &str = "0001010101010101010202020202020202030309b97b32";
const APP_KEY: [u8; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

/// What the device does with a join-accept (hex), by an independent implementation
/// (pyca/cryptography, from the spec): decrypt, check the MIC, derive the session keys.
fn device_opens(join_accept_hex: &str) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/lorawan/spec_vectors.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg("--open-join-accept-1.0")
        .arg(hex::encode(APP_KEY))
        .arg(join_accept_hex)
        .arg("771")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_accepted_once_and_refusals_carry_result_codes() {
    let server = common::start(&[]).await;
    let r = &server.running.registry;
    let settings = JoinServerSettings {
        net_id: [0x00, 0x00, 0x13],
        ..Default::default()
    };
    let phy = hex::decode(JOIN_REQUEST).unwrap();

    // Unknown device first.
    let refused = join(r, &settings, &phy, [1, 2, 3, 4], 1).await.unwrap_err();
    assert_eq!(refused.result_code(), "UnknownDevEUI");

    r.insert_lorawan_device(
        &NewLorawanDevice {
            dev_eui: "0202020202020202",
            join_eui: "0101010101010101",
            mac_version: "1.0.3",
            app_key: &APP_KEY,
            nwk_key: None,
        },
        1,
    )
    .await
    .unwrap();
    let accepted = join(r, &settings, &phy, [1, 2, 3, 4], 2).await.unwrap();
    assert_eq!(accepted.dev_eui, "0202020202020202");
    assert_eq!(accepted.join_nonce, 0);
    let addr = hex::decode(&accepted.dev_addr).unwrap();
    assert_eq!(
        addr[0] >> 1,
        0x13,
        "DevAddr in NetID 000013's block: {}",
        accepted.dev_addr
    );
    // Join-accept: MHDR 0x20, 12 bytes of fields + MIC, encrypted.
    assert_eq!(accepted.phy_payload.len(), 17);
    assert_eq!(accepted.phy_payload[0], 0x20);
    // The session is stored, sealed, under the DevAddr.
    let (eui, keys, fcnt) = r.lorawan_session_by_addr(&accepted.dev_addr).await.unwrap();
    assert_eq!((eui.as_str(), fcnt), ("0202020202020202", None));
    assert_eq!(&keys[48..], &accepted.session.app_s_key[..]);
    assert_eq!(&keys[..16], &accepted.session.f_nwk_s_int_key[..]);

    // The device's side, by an independent implementation (pyca/cryptography, from the spec):
    // the join-accept decrypts, its MIC verifies, and the keys it derives are the ones stored.
    let device = device_opens(&hex::encode(&accepted.phy_payload));
    assert_eq!(device["mic_ok"], true, "{device}");
    assert_eq!(device["join_nonce"], 0);
    assert_eq!(device["net_id"], "000013");
    assert_eq!(device["dev_addr"].as_str().unwrap().to_uppercase(), accepted.dev_addr);
    assert_eq!(device["app_s_key"], hex::encode(accepted.session.app_s_key));
    assert_eq!(device["nwk_s_key"], hex::encode(accepted.session.f_nwk_s_int_key));

    // The same join-request again: a replay, after the MIC.
    let replay = join(r, &settings, &phy, [5, 6, 7, 8], 3).await.unwrap_err();
    assert_eq!(replay, JoinRefusal::DevNonceReused { dev_nonce: 771 });
    assert_eq!(replay.result_code(), "JoinReqFailed");
    // A flipped MIC bit.
    let mut bad = phy.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(
        join(r, &settings, &bad, [0; 4], 4).await.unwrap_err().result_code(),
        "MICFailed"
    );
    // Not a join-request at all.
    assert_eq!(
        join(r, &settings, &[0x40, 1, 2], [0; 4], 5)
            .await
            .unwrap_err()
            .result_code(),
        "MalformedRequest"
    );
    // An ABP device does not join.
    r.insert_lorawan_abp(
        &NewAbpDevice {
            dev_eui: "0303030303030303",
            dev_addr: "26011bda",
            mac_version: "1.0.3",
            session_keys: &[7; registry::SESSION_KEYS_LEN],
            f_cnt_up: None,
            f_cnt_down: 0,
        },
        6,
    )
    .await
    .unwrap();
    let mut abp = phy.clone();
    abp[9..17].copy_from_slice(&[3; 8]);
    assert_eq!(
        join(r, &settings, &abp, [0; 4], 7).await.unwrap_err().result_code(),
        "ActivationDisallowed"
    );
    server.running.shutdown().await;
}

/// The same logic behind LoRaWAN Backend Interfaces HTTP, as a network server calls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_interfaces_join_req_gets_a_join_ans() {
    let server = common::start(&[]).await;
    let r = &server.running.registry;
    let token = r
        .create_token(registry::Role::Operator, None, "ns", 0)
        .await
        .unwrap()
        .secret
        .to_string();
    r.insert_lorawan_device(
        &NewLorawanDevice {
            dev_eui: "0202020202020202",
            join_eui: "0101010101010101",
            mac_version: "1.0.3",
            app_key: &APP_KEY,
            nwk_key: None,
        },
        1,
    )
    .await
    .unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let http = reqwest::Client::new();
    let url = format!("http://{}/lorawan/join", server.running.http_addr);
    let req = serde_json::json!({
        "ProtocolVersion": "1.0", "SenderID": "000013", "ReceiverID": "0101010101010101",
        "TransactionID": 42, "MessageType": "JoinReq", "MACVersion": "1.0.3",
        "PHYPayload": format!("0x{JOIN_REQUEST}"), "DevEUI": "0202020202020202",
        "DevAddr": "01020304", "DLSettings": "00", "RxDelay": 1,
    });
    let post = |body: serde_json::Value, auth: Option<String>| {
        let mut b = http.post(&url).json(&body);
        if let Some(a) = auth {
            b = b.header("Authorization", a);
        }
        b.send()
    };
    let ans: serde_json::Value = post(req.clone(), Some(format!("Bearer {token}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ans["Result"]["ResultCode"], "Success", "{ans}");
    assert_eq!(ans["MessageType"], "JoinAns");
    assert_eq!(ans["TransactionID"], 42);
    assert_eq!(ans["ReceiverID"], "000013");
    assert_eq!(ans["NwkSKey"]["KEKLabel"], "", "no KEK configured: keys in clear");
    // The device's side (independent implementation): MIC, DevAddr as the NS chose, same keys.
    let device = device_opens(ans["PHYPayload"].as_str().unwrap());
    assert_eq!(device["mic_ok"], true, "{device}");
    assert_eq!(device["dev_addr"], "01020304");
    assert_eq!(ans["NwkSKey"]["AESKey"], device["nwk_s_key"]);
    assert_eq!(ans["AppSKey"]["AESKey"], device["app_s_key"]);
    // A replayed JoinReq, garbage, no token.
    let replay: serde_json::Value = post(req.clone(), Some(format!("Bearer {token}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replay["Result"]["ResultCode"], "JoinReqFailed", "{replay}");
    let garbage: serde_json::Value = post(
        serde_json::json!({"MessageType": "JoinReq", "PHYPayload": "zz"}),
        Some(format!("Bearer {token}")),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(garbage["Result"]["ResultCode"], "MalformedRequest", "{garbage}");
    assert_eq!(post(req.clone(), None).await.unwrap().status().as_u16(), 401);
    // A network server that runs the device as 1.1 would derive other keys: refused, named. The
    // token may come without the `Bearer` scheme (a literal header value in the NS's config).
    let mut as_1_1 = req.clone();
    as_1_1["MACVersion"] = serde_json::json!("1.1");
    let ans: serde_json::Value = post(as_1_1, Some(token.clone())).await.unwrap().json().await.unwrap();
    assert_eq!(ans["Result"]["ResultCode"], "JoinReqFailed", "{ans}");
    assert!(
        ans["Result"]["Description"]
            .as_str()
            .unwrap()
            .contains("provisioned for 1.0.3"),
        "{ans}"
    );
    let mut bad = req;
    bad["MACVersion"] = serde_json::json!("2.0");
    let ans: serde_json::Value = post(bad, Some(token.clone())).await.unwrap().json().await.unwrap();
    assert_eq!(ans["Result"]["ResultCode"], "MalformedRequest", "{ans}");
    server.running.shutdown().await;
}
