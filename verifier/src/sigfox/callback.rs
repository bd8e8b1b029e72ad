//! Sigfox backend callbacks, parsed: the body the Sigfox cloud POSTs for each uplink it
//! received (a *data* callback, configured per device type), as JSON or as a form.
//!
//! The backend fills a template the operator writes, so the same field arrives as a JSON
//! number (`"seqNumber": {seqNumber}`), a JSON string (`"seqNumber": "{seqNumber}"`) or a form
//! value; all three are accepted. The fields that decide what is stored are required and
//! checked strictly (`device`, `time`, `data`, `seqNumber`); the radio metadata (`station`,
//! `rssi`, `snr`, …) is kept when it is well formed and dropped when not. Unknown fields are
//! ignored: a device type may send more than we use.
//!
//! Authenticity is not decided here: the Sigfox cloud checked the UL-AUTH, and the caller checks
//! that the request came from that cloud (a shared secret, a source address).

use serde::Serialize;

/// Largest callback body read (a data callback is a few hundred bytes).
pub const MAX_BODY: usize = 16 * 1024;

/// How the body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
}

/// A parsed data callback.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Callback {
    /// The device id as the backend wrote it (the key of a downlink answer must match it).
    pub device: String,
    /// The device id, 8 upper-case hex digits (`device` left-padded with zeros).
    pub device_id: String,
    /// When the backend received the message, unix seconds (with the sequence number and the
    /// device, what names one message across the backend's retries).
    pub time: i64,
    /// The payload, 0 to 12 bytes.
    pub data: Vec<u8>,
    /// The 12-bit sequence number.
    pub seq_number: u16,
    /// The device waits for a downlink (`ack`).
    pub ack: bool,
    /// Another base station's copy of a message the backend already called back for.
    pub duplicate: bool,
    pub station: Option<String>,
    pub rssi: Option<f64>,
    pub snr: Option<f64>,
    pub avg_snr: Option<f64>,
    pub lat: Option<f64>,
    pub lng: Option<f64>,
    pub device_type_id: Option<String>,
}

/// Why a callback body was refused. Every variant names the failed check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallbackError {
    #[error("the body is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("the body is not a JSON object: {detail}")]
    NotJson { detail: String },
    #[error("the body is not a form (application/x-www-form-urlencoded): {detail}")]
    NotForm { detail: String },
    #[error("field `{field}` is missing")]
    Missing { field: &'static str },
    #[error("field `{field}` appears more than once")]
    Repeated { field: String },
    #[error("field `{field}` is invalid: {detail}")]
    Invalid { field: &'static str, detail: &'static str },
}

impl CallbackError {
    /// Stable name of the failed check, for metrics and events.
    pub fn check(&self) -> &'static str {
        match self {
            CallbackError::TooLarge => "body_too_large",
            CallbackError::NotJson { .. } => "not_json",
            CallbackError::NotForm { .. } => "not_form",
            CallbackError::Missing { .. } => "missing_field",
            CallbackError::Repeated { .. } => "repeated_field",
            CallbackError::Invalid { .. } => "invalid_field",
        }
    }
}

/// One field's value, whichever way it came.
#[derive(Clone, Debug)]
enum Value {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
    /// `null`, an array or an object: present, but no scalar.
    Other,
}

impl Value {
    fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Value::Text(s) => Some(std::borrow::Cow::Borrowed(s.trim())),
            Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
            Value::Bool(b) => Some(std::borrow::Cow::Borrowed(if *b { "true" } else { "false" })),
            Value::Other => None,
        }
    }
}

/// Parses a callback body.
pub fn parse(encoding: Encoding, body: &[u8]) -> Result<Callback, CallbackError> {
    if body.len() > MAX_BODY {
        return Err(CallbackError::TooLarge);
    }
    let fields = match encoding {
        Encoding::Json => json_fields(body)?,
        Encoding::Form => form_fields(body)?,
    };
    let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let required = |field: &'static str| {
        get(field)
            .ok_or(CallbackError::Missing { field })?
            .text()
            .ok_or(CallbackError::Invalid {
                field,
                detail: "not a string, number or boolean",
            })
    };

    let device = required("device")?.into_owned();
    let device_id = device_id(&device)?;
    let time = required("time")?
        .parse::<i64>()
        .ok()
        .filter(|t| (0..=MAX_TIME).contains(t))
        .ok_or(CallbackError::Invalid {
            field: "time",
            detail: "not unix seconds",
        })?;
    let data = required("data")?;
    let data = hex::decode(data.as_ref()).map_err(|_| CallbackError::Invalid {
        field: "data",
        detail: "not an even number of hex digits",
    })?;
    if data.len() > super::MAX_PAYLOAD {
        return Err(CallbackError::Invalid {
            field: "data",
            detail: "longer than 12 bytes",
        });
    }
    let seq_number = required("seqNumber")?
        .parse::<u16>()
        .ok()
        .filter(|s| *s < super::SEQ_MODULUS)
        .ok_or(CallbackError::Invalid {
            field: "seqNumber",
            detail: "not a 12-bit sequence number (0 to 4095)",
        })?;
    let flag = |field: &'static str| -> Result<bool, CallbackError> {
        match get(field).map(Value::text) {
            None => Ok(false),
            Some(Some(v)) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
            Some(Some(v)) if v.eq_ignore_ascii_case("false") || v == "0" || v.is_empty() => Ok(false),
            Some(_) => Err(CallbackError::Invalid {
                field,
                detail: "not true or false",
            }),
        }
    };
    let ack = flag("ack")?;
    let duplicate = flag("duplicate")?;
    let number = |field: &str| {
        get(field)
            .and_then(Value::text)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
    };
    let label = |field: &str| {
        get(field)
            .and_then(Value::text)
            .filter(|v| {
                (1..=MAX_LABEL).contains(&v.len())
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            })
            .map(|v| v.into_owned())
    };
    Ok(Callback {
        device,
        device_id,
        time,
        data,
        seq_number,
        ack,
        duplicate,
        station: label("station"),
        rssi: number("rssi"),
        snr: number("snr"),
        avg_snr: number("avgSnr"),
        lat: number("lat"),
        lng: number("lng"),
        device_type_id: label("deviceTypeId"),
    })
}

/// Latest `time` accepted: the year 2286, far beyond any real callback, well inside `i64` ms.
const MAX_TIME: i64 = 9_999_999_999;
/// Longest station or device-type label kept.
const MAX_LABEL: usize = 64;
/// Most fields read from one body.
const MAX_FIELDS: usize = 128;

/// 1 to 8 hex digits (the backend drops leading zeros in some templates), as 8 upper-case digits.
fn device_id(device: &str) -> Result<String, CallbackError> {
    if device.is_empty() || device.len() > 8 || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CallbackError::Invalid {
            field: "device",
            detail: "not a Sigfox device id (1 to 8 hex digits)",
        });
    }
    Ok(format!("{:0>8}", device.to_ascii_uppercase()))
}

fn json_fields(body: &[u8]) -> Result<Vec<(String, Value)>, CallbackError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| CallbackError::NotJson { detail: e.to_string() })?;
    let serde_json::Value::Object(map) = value else {
        return Err(CallbackError::NotJson {
            detail: "the top level is not an object".into(),
        });
    };
    if map.len() > MAX_FIELDS {
        return Err(CallbackError::NotJson {
            detail: format!("more than {MAX_FIELDS} fields"),
        });
    }
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => Value::Text(s),
                serde_json::Value::Number(n) => Value::Number(n),
                serde_json::Value::Bool(b) => Value::Bool(b),
                _ => Value::Other,
            };
            (k, v)
        })
        .collect())
}

fn form_fields(body: &[u8]) -> Result<Vec<(String, Value)>, CallbackError> {
    if std::str::from_utf8(body).is_err() {
        return Err(CallbackError::NotForm {
            detail: "not UTF-8".into(),
        });
    }
    let mut fields: Vec<(String, Value)> = Vec::new();
    for (k, v) in form_urlencoded::parse(body) {
        if fields.len() == MAX_FIELDS {
            return Err(CallbackError::NotForm {
                detail: format!("more than {MAX_FIELDS} fields"),
            });
        }
        // A repeated field would let two readers of the same body disagree on its value.
        if fields.iter().any(|(seen, _)| *seen == k) {
            return Err(CallbackError::Repeated { field: k.into_owned() });
        }
        fields.push((k.into_owned(), Value::Text(v.into_owned())));
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_templated_json_body_parses() {
        let body = br#"{"device":"4D33DB","time":1700000000,"data":"0102ab","seqNumber":4095,
            "ack":true,"duplicate":false,"snr":"18.37","rssi":-121.5,"station":"1E7A","lat":48,"lng":2,
            "deviceTypeId":"5f2a0c","customData#x":"ignored"}"#;
        let c = parse(Encoding::Json, body).unwrap();
        assert_eq!(c.device, "4D33DB");
        assert_eq!(c.device_id, "004D33DB");
        assert_eq!(
            (c.time, c.seq_number, c.ack, c.duplicate),
            (1_700_000_000, 4095, true, false)
        );
        assert_eq!(c.data, [1, 2, 0xab]);
        assert_eq!((c.snr, c.rssi), (Some(18.37), Some(-121.5)));
        assert_eq!(c.station.as_deref(), Some("1E7A"));
    }

    #[test]
    fn a_form_body_parses_and_quoted_numbers_are_numbers() {
        let c = parse(
            Encoding::Form,
            b"device=004D33DB&time=1700000000&data=&seqNumber=0&ack=false&station=0A1B&snr=9.5",
        )
        .unwrap();
        assert_eq!((c.seq_number, c.ack, c.data.len()), (0, false, 0));
        let j = parse(
            Encoding::Json,
            br#"{"device":"004D33DB","time":"1700000000","data":"","seqNumber":"0","ack":"false"}"#,
        )
        .unwrap();
        assert_eq!((j.time, j.seq_number), (c.time, c.seq_number));
    }

    #[test]
    fn each_refusal_names_its_check() {
        let cases: &[(Encoding, &[u8], &str)] = &[
            (Encoding::Json, b"not json", "not_json"),
            (Encoding::Json, b"[1,2]", "not_json"),
            (
                Encoding::Json,
                br#"{"time":1,"data":"","seqNumber":1}"#,
                "missing_field",
            ),
            (
                Encoding::Json,
                br#"{"device":"XYZ","time":1,"data":"","seqNumber":1}"#,
                "invalid_field",
            ),
            (
                Encoding::Json,
                br#"{"device":"123456789","time":1,"data":"","seqNumber":1}"#,
                "invalid_field",
            ),
            (
                Encoding::Json,
                br#"{"device":"1","time":-1,"data":"","seqNumber":1}"#,
                "invalid_field",
            ),
            (
                Encoding::Json,
                br#"{"device":"1","time":1,"data":"abc","seqNumber":1}"#,
                "invalid_field",
            ),
            (
                Encoding::Json,
                br#"{"device":"1","time":1,"data":"00112233445566778899aabbcc","seqNumber":1}"#,
                "invalid_field",
            ),
            (
                Encoding::Json,
                br#"{"device":"1","time":1,"data":"","seqNumber":4096}"#,
                "invalid_field",
            ),
            (
                Encoding::Json,
                br#"{"device":"1","time":1,"data":"","seqNumber":1,"ack":"maybe"}"#,
                "invalid_field",
            ),
            (
                Encoding::Json,
                br#"{"device":{},"time":1,"data":"","seqNumber":1}"#,
                "invalid_field",
            ),
            (
                Encoding::Form,
                b"device=1&device=2&time=1&data=&seqNumber=1",
                "repeated_field",
            ),
            (Encoding::Form, b"device=1&time=1&data=&seqNumber=1.5", "invalid_field"),
            (Encoding::Form, b"\xff\xfe", "not_form"),
        ];
        for (encoding, body, check) in cases {
            let err = parse(*encoding, body).unwrap_err();
            assert_eq!(err.check(), *check, "{}: {err}", String::from_utf8_lossy(body));
        }
        assert_eq!(
            parse(Encoding::Json, &vec![b' '; MAX_BODY + 1]).unwrap_err().check(),
            "body_too_large"
        );
    }

    #[test]
    fn malformed_metadata_is_dropped_not_refused() {
        let c = parse(
            Encoding::Json,
            br#"{"device":"1","time":1,"data":"","seqNumber":1,"snr":"n/a","rssi":null,"station":"<script>"}"#,
        )
        .unwrap();
        assert_eq!((c.snr, c.rssi, c.station), (None, None, None));
    }
}
