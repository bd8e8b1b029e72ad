//! # semtech-udp — the packet-forwarder protocol LoRaWAN gateways speak
//!
//! Semtech's UDP protocol (`PROTOCOL.TXT` of the packet forwarder, versions 1 and 2): a 4-byte
//! header (protocol version, 2-byte random token, identifier), then the gateway EUI and a JSON
//! object depending on the identifier.
//!
//! | id | name | direction | body |
//! |---|---|---|---|
//! | 0x00 | PUSH_DATA | gateway → server | EUI, `{"rxpk": […], "stat": {…}}` |
//! | 0x01 | PUSH_ACK | server → gateway | — |
//! | 0x02 | PULL_DATA | gateway → server | EUI (keep-alive; opens the downlink path) |
//! | 0x03 | PULL_RESP | server → gateway | `{"txpk": {…}}` |
//! | 0x04 | PULL_ACK | server → gateway | — |
//! | 0x05 | TX_ACK | gateway → server | EUI, optionally `{"txpk_ack": {"error": …}}` |
//!
//! Gateways are not authenticated by this protocol: every datagram is hostile until a frame's
//! MIC says otherwise. [`decode`] never panics; every refusal is a [`UdpError`] naming what was
//! wrong, and limits bound what one datagram can make us allocate.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Largest datagram accepted (a full concentrator report fits comfortably).
pub const MAX_DATAGRAM: usize = 65_507;
/// Most `rxpk` entries accepted in one PUSH_DATA.
pub const MAX_RXPK: usize = 64;
/// Largest LoRa PHYPayload.
pub const MAX_PHY_PAYLOAD: usize = 255;

/// A gateway EUI (8 bytes, most significant first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GatewayEui(pub [u8; 8]);

impl std::fmt::Display for GatewayEui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Why a datagram was dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UdpError {
    #[error("datagram of {len} bytes is too short for its header")]
    TooShort { len: usize },
    #[error("datagram of {len} bytes exceeds {MAX_DATAGRAM}")]
    TooLong { len: usize },
    #[error("protocol version {0} (1 and 2 are known)")]
    UnknownVersion(u8),
    #[error("identifier 0x{0:02x} is not a packet-forwarder message")]
    UnknownIdentifier(u8),
    #[error("identifier 0x{0:02x} is a server-to-gateway message")]
    WrongDirection(u8),
    #[error("JSON body: {0}")]
    Json(String),
    #[error("rxpk[{index}]: {detail}")]
    BadRxpk { index: usize, detail: String },
    #[error("{count} rxpk entries; at most {MAX_RXPK}")]
    TooManyRxpk { count: usize },
}

impl UdpError {
    /// A stable name for the failed check (for counters and events).
    pub fn check(&self) -> &'static str {
        match self {
            UdpError::TooShort { .. } => "too_short",
            UdpError::TooLong { .. } => "too_long",
            UdpError::UnknownVersion(_) => "unknown_version",
            UdpError::UnknownIdentifier(_) => "unknown_identifier",
            UdpError::WrongDirection(_) => "wrong_direction",
            UdpError::Json(_) => "bad_json",
            UdpError::BadRxpk { .. } => "bad_rxpk",
            UdpError::TooManyRxpk { .. } => "too_many_rxpk",
        }
    }
}

/// A received LoRa (or FSK) packet as the gateway reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct RxPk {
    /// Concentrator timestamp (µs, wraps), for the RX1/RX2 windows of a downlink.
    pub tmst: u32,
    pub time: Option<String>,
    /// MHz.
    pub freq: f64,
    pub chan: Option<u32>,
    pub rfch: Option<u32>,
    /// CRC status: 1 OK, -1 bad, 0 none.
    pub stat: i8,
    pub modu: String,
    /// `SF7BW125` for LoRa; bits/s for FSK.
    pub datr: String,
    pub codr: Option<String>,
    pub rssi: Option<i32>,
    pub lsnr: Option<f64>,
    /// The PHYPayload.
    pub data: Vec<u8>,
}

/// Gateway status (`stat`), as reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub time: Option<String>,
    pub rxnb: Option<u64>,
    pub rxok: Option<u64>,
    pub rxfw: Option<u64>,
    pub ackr: Option<f64>,
    pub dwnb: Option<u64>,
    pub txnb: Option<u64>,
}

/// A decoded gateway → server datagram.
#[derive(Clone, Debug, PartialEq)]
pub enum Packet {
    PushData {
        version: u8,
        token: u16,
        gateway: GatewayEui,
        rxpk: Vec<RxPk>,
        stat: Option<Stat>,
    },
    PullData {
        version: u8,
        token: u16,
        gateway: GatewayEui,
    },
    TxAck {
        version: u8,
        token: u16,
        gateway: GatewayEui,
        /// `None` or `NONE`: sent.
        error: Option<String>,
    },
}

#[derive(Deserialize)]
struct PushBody {
    #[serde(default)]
    rxpk: Option<Vec<serde_json::Value>>,
    /// Read leniently afterwards: a status report the forwarder formats its own way must not
    /// cost the frames beside it.
    #[serde(default)]
    stat: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawRxPk {
    #[serde(default)]
    time: Option<String>,
    tmst: u32,
    freq: f64,
    #[serde(default)]
    chan: Option<u32>,
    #[serde(default)]
    rfch: Option<u32>,
    #[serde(default)]
    stat: Option<i8>,
    modu: String,
    datr: serde_json::Value,
    #[serde(default)]
    codr: Option<String>,
    /// PROTOCOL.TXT says a signed integer; multi-antenna forwarders report fractions.
    #[serde(default)]
    rssi: Option<f64>,
    #[serde(default)]
    lsnr: Option<f64>,
    #[serde(default)]
    size: Option<usize>,
    data: String,
}

fn header(datagram: &[u8]) -> Result<(u8, u16, u8), UdpError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(UdpError::TooLong { len: datagram.len() });
    }
    if datagram.len() < 4 {
        return Err(UdpError::TooShort { len: datagram.len() });
    }
    let version = datagram[0];
    if !(1..=2).contains(&version) {
        return Err(UdpError::UnknownVersion(version));
    }
    Ok((version, u16::from_be_bytes([datagram[1], datagram[2]]), datagram[3]))
}

fn gateway(datagram: &[u8]) -> Result<GatewayEui, UdpError> {
    let eui: [u8; 8] = datagram
        .get(4..12)
        .and_then(|b| b.try_into().ok())
        .ok_or(UdpError::TooShort { len: datagram.len() })?;
    Ok(GatewayEui(eui))
}

/// Decodes a datagram from a gateway.
pub fn decode(datagram: &[u8]) -> Result<Packet, UdpError> {
    let (version, token, id) = header(datagram)?;
    match id {
        0x00 => {
            let gateway = gateway(datagram)?;
            let body: PushBody = serde_json::from_slice(&datagram[12..]).map_err(|e| UdpError::Json(e.to_string()))?;
            let raw = body.rxpk.unwrap_or_default();
            if raw.len() > MAX_RXPK {
                return Err(UdpError::TooManyRxpk { count: raw.len() });
            }
            let rxpk = raw
                .into_iter()
                .enumerate()
                .map(|(index, v)| rxpk(index, v))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Packet::PushData {
                version,
                token,
                gateway,
                rxpk,
                stat: body.stat.and_then(|v| serde_json::from_value(v).ok()),
            })
        }
        0x02 => Ok(Packet::PullData {
            version,
            token,
            gateway: gateway(datagram)?,
        }),
        0x05 => {
            let gateway = gateway(datagram)?;
            let rest = &datagram[12..];
            let error = if rest.iter().all(|b| b.is_ascii_whitespace() || *b == 0) {
                None
            } else {
                let v: serde_json::Value = serde_json::from_slice(rest.strip_suffix(&[0]).unwrap_or(rest))
                    .map_err(|e| UdpError::Json(e.to_string()))?;
                v.get("txpk_ack")
                    .and_then(|a| a.get("error"))
                    .and_then(|e| e.as_str())
                    .map(|e| e.chars().take(64).collect())
            };
            Ok(Packet::TxAck {
                version,
                token,
                gateway,
                error,
            })
        }
        0x01 | 0x03 | 0x04 => Err(UdpError::WrongDirection(id)),
        other => Err(UdpError::UnknownIdentifier(other)),
    }
}

fn rxpk(index: usize, v: serde_json::Value) -> Result<RxPk, UdpError> {
    let bad = |detail: String| UdpError::BadRxpk { index, detail };
    let r: RawRxPk = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
    if r.data.len() > 4 * MAX_PHY_PAYLOAD.div_ceil(3) + 4 {
        return Err(bad("data is longer than any LoRaWAN frame".into()));
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(r.data.trim_end_matches('=').as_bytes())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(r.data.trim_end_matches('=')))
        .map_err(|e| bad(format!("data is not base64: {e}")))?;
    if data.len() > MAX_PHY_PAYLOAD {
        return Err(bad(format!("{} bytes of data; at most {MAX_PHY_PAYLOAD}", data.len())));
    }
    if let Some(size) = r.size
        && size != data.len()
    {
        return Err(bad(format!("size {size} but {} bytes of data", data.len())));
    }
    if !r.freq.is_finite() || r.freq <= 0.0 || r.freq > 10_000.0 {
        return Err(bad("freq is not a frequency in MHz".into()));
    }
    let datr = match &r.datr {
        serde_json::Value::String(s) if s.len() <= 16 => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return Err(bad("datr is neither a LoRa data rate nor an FSK bit rate".into())),
    };
    Ok(RxPk {
        tmst: r.tmst,
        time: r.time.map(|t| t.chars().take(40).collect()),
        freq: r.freq,
        chan: r.chan,
        rfch: r.rfch,
        stat: r.stat.unwrap_or(1),
        modu: r.modu.chars().take(8).collect(),
        datr,
        codr: r.codr.map(|c| c.chars().take(8).collect()),
        rssi: r
            .rssi
            .filter(|v| v.is_finite() && (-300.0..=100.0).contains(v))
            .map(|v| v.round() as i32),
        lsnr: r.lsnr.filter(|l| l.is_finite()),
        data,
    })
}

/// PUSH_ACK for a PUSH_DATA.
pub fn push_ack(version: u8, token: u16) -> [u8; 4] {
    let t = token.to_be_bytes();
    [version, t[0], t[1], 0x01]
}

/// PULL_ACK for a PULL_DATA.
pub fn pull_ack(version: u8, token: u16) -> [u8; 4] {
    let t = token.to_be_bytes();
    [version, t[0], t[1], 0x04]
}

/// A downlink for the gateway to transmit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TxPk {
    /// Send immediately (ignores `tmst`).
    pub imme: bool,
    /// Concentrator time to send at (µs), e.g. the uplink's `tmst` + 5 s for a join-accept's RX1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmst: Option<u32>,
    pub freq: f64,
    pub rfch: u32,
    pub powe: i32,
    pub modu: String,
    pub datr: String,
    pub codr: String,
    /// Inverted polarity: true for LoRaWAN downlinks.
    pub ipol: bool,
    pub size: usize,
    /// The PHYPayload, base64.
    pub data: String,
}

impl TxPk {
    /// A LoRa downlink of `phy_payload`.
    pub fn lora(phy_payload: &[u8], tmst: u32, freq: f64, datr: &str, powe: i32) -> Self {
        TxPk {
            imme: false,
            tmst: Some(tmst),
            freq,
            rfch: 0,
            powe,
            modu: "LORA".into(),
            datr: datr.into(),
            codr: "4/5".into(),
            ipol: true,
            size: phy_payload.len(),
            data: base64::engine::general_purpose::STANDARD.encode(phy_payload),
        }
    }
}

/// PULL_RESP carrying a downlink (token: the one TX_ACK will echo, for protocol version 2).
pub fn pull_resp(version: u8, token: u16, txpk: &TxPk) -> Vec<u8> {
    let t = token.to_be_bytes();
    let mut out = vec![version, t[0], t[1], 0x03];
    // Serializing a struct of plain fields cannot fail.
    out.extend(serde_json::to_vec(&serde_json::json!({ "txpk": txpk })).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_data_from_the_protocol_text() {
        // The example in PROTOCOL.TXT §4, wrapped in a PUSH_DATA header.
        let body = br#"{"rxpk":[{"time":"2013-03-31T16:21:17.528002Z","tmst":3512348611,"chan":2,"rfch":0,"freq":866.349812,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/6","rssi":-35,"lsnr":5.1,"size":32,"data":"-DS4CGaDCdG+48eJNM3Vai-zDpsR71Pn9CPA9uCON84"}],"stat":{"time":"2014-01-12 08:59:28 GMT","rxnb":2,"rxok":2,"rxfw":2,"ackr":100.0,"dwnb":2,"txnb":2}}"#;
        let mut d = vec![2, 0xab, 0xcd, 0x00, 1, 2, 3, 4, 5, 6, 7, 8];
        d.extend_from_slice(body);
        // That example's data uses the URL-safe alphabet; real forwarders send standard base64.
        assert_eq!(decode(&d).unwrap_err().check(), "bad_rxpk");
        let fixed_body = String::from_utf8(body.to_vec())
            .unwrap()
            .replace("-DS4", "+DS4")
            .replace("ai-zD", "ai+zD");
        let mut fixed = d[..12].to_vec();
        fixed.extend_from_slice(fixed_body.as_bytes());
        match decode(&fixed).unwrap() {
            Packet::PushData {
                version,
                token,
                gateway,
                rxpk,
                stat,
            } => {
                assert_eq!((version, token), (2, 0xabcd));
                assert_eq!(gateway.to_string(), "0102030405060708");
                assert_eq!(rxpk.len(), 1);
                assert_eq!(rxpk[0].data.len(), 32);
                assert_eq!(rxpk[0].tmst, 3_512_348_611);
                assert_eq!(rxpk[0].datr, "SF7BW125");
                assert_eq!(stat.unwrap().rxnb, Some(2));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(push_ack(2, 0xabcd), [2, 0xab, 0xcd, 1]);
    }

    #[test]
    fn pull_and_tx_ack() {
        let d = [2, 0, 7, 0x02, 1, 2, 3, 4, 5, 6, 7, 8];
        assert!(matches!(decode(&d).unwrap(), Packet::PullData { token: 7, .. }));
        assert_eq!(pull_ack(2, 7), [2, 0, 7, 4]);
        let mut ack = vec![2, 0, 9, 0x05, 1, 2, 3, 4, 5, 6, 7, 8];
        assert!(matches!(decode(&ack).unwrap(), Packet::TxAck { error: None, .. }));
        ack.extend_from_slice(br#"{"txpk_ack":{"error":"TOO_LATE"}}"#);
        match decode(&ack).unwrap() {
            Packet::TxAck { error, .. } => assert_eq!(error.as_deref(), Some("TOO_LATE")),
            other => panic!("{other:?}"),
        }
        let resp = pull_resp(2, 9, &TxPk::lora(&[0x20, 1, 2], 1000, 868.1, "SF7BW125", 14));
        assert_eq!(&resp[..4], &[2, 0, 9, 3]);
        let v: serde_json::Value = serde_json::from_slice(&resp[4..]).unwrap();
        assert_eq!(v["txpk"]["data"], "IAEC");
        assert_eq!(v["txpk"]["ipol"], true);
    }

    #[test]
    fn forwarders_own_formats_do_not_cost_frames() {
        // A fractional RSSI (multi-antenna HALs) and a status report with fields of other types
        // and extra ones: the frame is kept, the odd status is dropped.
        let mut d = vec![2, 0, 5, 0x00, 1, 2, 3, 4, 5, 6, 7, 8];
        d.extend_from_slice(
            br#"{"rxpk":[{"tmst":7,"freq":868.1,"stat":1,"modu":"LORA","datr":"SF7BW125","rssi":-97.6,"rssis":-99,"lsnr":-2.25,"brd":0,"jver":2,"data":"AAAA"}],"stat":{"time":"now","rxnb":"many","lati":46.2}}"#,
        );
        match decode(&d).unwrap() {
            Packet::PushData { rxpk, stat, .. } => {
                assert_eq!(rxpk[0].rssi, Some(-98));
                assert_eq!(rxpk[0].data, [0, 0, 0]);
                assert_eq!(stat, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_datagrams_are_typed_errors() {
        assert_eq!(decode(&[]).unwrap_err().check(), "too_short");
        assert_eq!(decode(&[9, 0, 0, 0]).unwrap_err().check(), "unknown_version");
        assert_eq!(decode(&[2, 0, 0, 0x09]).unwrap_err().check(), "unknown_identifier");
        assert_eq!(decode(&[2, 0, 0, 0x01]).unwrap_err().check(), "wrong_direction");
        assert_eq!(decode(&[2, 0, 0, 0x00, 1, 2]).unwrap_err().check(), "too_short");
        let mut d = vec![2, 0, 0, 0x00, 1, 2, 3, 4, 5, 6, 7, 8];
        d.extend_from_slice(b"{not json");
        assert_eq!(decode(&d).unwrap_err().check(), "bad_json");
        let mut d = vec![2, 0, 0, 0x00, 1, 2, 3, 4, 5, 6, 7, 8];
        d.extend_from_slice(
            br#"{"rxpk":[{"tmst":1,"freq":868.1,"modu":"LORA","datr":"SF7BW125","size":3,"data":"AAAAAA=="}]}"#,
        );
        assert_eq!(decode(&d).unwrap_err().check(), "bad_rxpk", "size disagrees with data");
    }
}
