//! The join server over LoRaWAN Backend Interfaces (TS002) HTTP: `POST /lorawan/join` takes a
//! JoinReq and answers a JoinAns, as ChirpStack and The Things Stack call an external join
//! server. Hex fields may carry a `0x` prefix. Session keys travel as KeyEnvelopes: wrapped
//! (RFC 3394 AES key wrap) under the configured KEK and its label, or in clear when no KEK is set.
//! The caller authenticates with an API token (operator or admin) in `Authorization`.

use super::join::{JoinServerSettings, NetworkServerChoices, join_with};
use crate::api::{ApiResult, Authorized, OPERATOR};
use crate::clock::now_ms;
use crate::http::AppState;
use aws_lc_rs::key_wrap::{AES_128, AES_256, AesKek, KeyWrap};
use axum::body::Bytes;
use axum::extract::State;
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// The join server's configuration.
#[derive(Clone, Default)]
pub struct JoinServerConfig {
    pub settings: JoinServerSettings,
    /// KEK label and key (16 or 32 bytes) for KeyEnvelopes; `None`: keys in clear.
    pub kek: Option<(String, Zeroizing<Vec<u8>>)>,
}

impl std::fmt::Debug for JoinServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinServerConfig")
            .field("settings", &self.settings)
            .field("kek_label", &self.kek.as_ref().map(|(l, _)| l))
            .finish()
    }
}

fn hex_field(v: &Value, name: &str) -> Result<Option<Vec<u8>>, String> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => super::decode_hex(s)
            .map(Some)
            .ok_or_else(|| format!("{name} is not hex")),
        Some(_) => Err(format!("{name} must be a hex string")),
    }
}

/// A KeyEnvelope: `{"KEKLabel", "AESKey"}`.
fn envelope(kek: &Option<(String, Zeroizing<Vec<u8>>)>, key: &[u8; 16]) -> Result<Value, String> {
    match kek {
        None => Ok(json!({ "KEKLabel": "", "AESKey": hex::encode(key) })),
        Some((label, k)) => {
            let cipher = if k.len() == 32 { &AES_256 } else { &AES_128 };
            let kek = AesKek::new(cipher, k).map_err(|_| "the configured KEK is not an AES key".to_owned())?;
            let mut out = [0u8; 24];
            let wrapped = kek.wrap(key, &mut out).map_err(|_| "key wrap failed".to_owned())?;
            Ok(json!({ "KEKLabel": label, "AESKey": hex::encode(wrapped) }))
        }
    }
}

/// `POST /lorawan/join`: JoinReq → JoinAns (always HTTP 200 with `Result.ResultCode`, as TS002
/// wants; an unreadable request is `MalformedRequest`).
pub(crate) async fn join_req(
    State(state): State<AppState>,
    Authorized(caller): Authorized<{ OPERATOR }>,
    body: Bytes,
) -> ApiResult<axum::Json<Value>> {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = |name: &str| req.get(name).and_then(Value::as_str).unwrap_or("").to_owned();
    let mut ans = json!({
        "ProtocolVersion": req.get("ProtocolVersion").cloned().unwrap_or(json!("1.0")),
        "SenderID": text("ReceiverID"),
        "ReceiverID": text("SenderID"),
        "TransactionID": req.get("TransactionID").cloned().unwrap_or(json!(0)),
        "MessageType": "JoinAns",
    });
    let fail = |mut ans: Value, code: &str, description: String| {
        ans["Result"] = json!({ "ResultCode": code, "Description": description });
        axum::Json(ans)
    };
    if !req.is_object() || text("MessageType") != "JoinReq" {
        return Ok(fail(ans, "MalformedRequest", "expected a JoinReq JSON object".into()));
    }
    let parsed = (|| -> Result<(Vec<u8>, NetworkServerChoices), String> {
        let phy = hex_field(&req, "PHYPayload")?.ok_or("PHYPayload is required")?;
        let fixed = |name: &str, len: usize| -> Result<Option<Vec<u8>>, String> {
            match hex_field(&req, name)? {
                Some(b) if b.len() != len => Err(format!("{name} must be {len} bytes")),
                other => Ok(other),
            }
        };
        let ns = NetworkServerChoices {
            dev_addr: fixed("DevAddr", 4)?.map(|b| [b[0], b[1], b[2], b[3]]),
            dl_settings: fixed("DLSettings", 1)?.map(|b| b[0]),
            rx_delay: match req.get("RxDelay") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .filter(|d| *d <= 15)
                        .map(|d| d as u8)
                        .ok_or("RxDelay must be 0..15")?,
                ),
            },
            cflist: fixed("CFList", 16)?.map(|b| {
                let mut c = [0u8; 16];
                c.copy_from_slice(&b);
                c
            }),
            mac_version: match req.get("MACVersion") {
                None | Some(Value::Null) => None,
                Some(Value::String(v)) => Some(
                    verifier::lorawan::MacVersion::parse(v.trim())
                        .ok_or_else(|| format!("MACVersion `{v}` is not 1.0.2, 1.0.3, 1.0.4 or 1.1"))?,
                ),
                Some(_) => return Err("MACVersion must be a string".into()),
            },
        };
        Ok((phy, ns))
    })();
    let (phy, ns) = match parsed {
        Ok(p) => p,
        Err(e) => return Ok(fail(ans, "MalformedRequest", e)),
    };
    let mut random = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut random);
    let config = &state.join_server;
    let outcome = join_with(&state.registry, &config.settings, &ns, &phy, random, now_ms()).await;
    super::udp::record_join(&state.stats, &state.events, &caller.actor(), &outcome, &text("DevEUI"));
    match outcome {
        Ok(accepted) => {
            // The network server called us; if its gateways also forward to this node's UDP
            // listener, the session is ready for them.
            state.lorawan_sessions.install_joined(&accepted);
            let s = &accepted.session;
            let keys = if accepted.mac_version == "1.1" {
                vec![
                    ("FNwkSIntKey", s.f_nwk_s_int_key),
                    ("SNwkSIntKey", s.s_nwk_s_int_key),
                    ("NwkSEncKey", s.nwk_s_enc_key),
                    ("AppSKey", s.app_s_key),
                ]
            } else {
                vec![("NwkSKey", s.f_nwk_s_int_key), ("AppSKey", s.app_s_key)]
            };
            for (name, key) in keys {
                match envelope(&config.kek, &key) {
                    Ok(e) => ans[name] = e,
                    Err(e) => return Ok(fail(ans, "Other", e)),
                }
            }
            ans["PHYPayload"] = json!(hex::encode(&accepted.phy_payload));
            ans["Lifetime"] = json!(0);
            ans["Result"] = json!({ "ResultCode": "Success" });
            Ok(axum::Json(ans))
        }
        Err(refusal) => Ok(fail(ans, refusal.result_code(), refusal.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_envelopes_wrap_per_rfc_3394() {
        // RFC 3394 §4.1: 128-bit key data wrapped with a 128-bit KEK.
        let kek = Some((
            "kek-1".to_owned(),
            Zeroizing::new(hex::decode("000102030405060708090A0B0C0D0E0F").unwrap_or_default()),
        ));
        let key: [u8; 16] = hex::decode("00112233445566778899AABBCCDDEEFF")
            .unwrap_or_default()
            .try_into()
            .unwrap_or([0; 16]);
        let e = envelope(&kek, &key).unwrap_or(Value::Null);
        assert_eq!(e["KEKLabel"], "kek-1");
        assert_eq!(e["AESKey"], "1fa68b0a8112b447aef34bd8fb5a7b829d3e862371d2cfe5");
        let clear = envelope(&None, &key).unwrap_or(Value::Null);
        assert_eq!(clear["AESKey"], "00112233445566778899aabbccddeeff");
    }
}
