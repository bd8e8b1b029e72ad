//! Typed reads of CBOR claim maps (integer keys), every failure naming the claim.

use super::AttestationError;
use ciborium::value::Value;

/// A decoded claims map. Duplicate keys are refused: two values for one claim is exactly the
/// ambiguity an attacker would use (one verifier reads the first, another the last).
#[derive(Debug)]
pub(crate) struct ClaimMap(Vec<(Value, Value)>);

impl ClaimMap {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, AttestationError> {
        let value: Value = ciborium::de::from_reader(bytes).map_err(|e| AttestationError::MalformedClaims {
            detail: format!("not CBOR: {e}"),
        })?;
        Self::from_value(value, "claims")
    }

    pub(crate) fn from_value(value: Value, what: &'static str) -> Result<Self, AttestationError> {
        let Value::Map(entries) = value else {
            return Err(AttestationError::MalformedClaims {
                detail: format!("{what} are not a CBOR map"),
            });
        };
        for (i, (k, _)) in entries.iter().enumerate() {
            if entries[..i].iter().any(|(other, _)| other == k) {
                return Err(AttestationError::MalformedClaims {
                    detail: format!("{what} repeat the key {}", describe_key(k)),
                });
            }
        }
        Ok(ClaimMap(entries))
    }

    pub(crate) fn get(&self, key: i64) -> Option<&Value> {
        self.0.iter().find_map(|(k, v)| match k {
            Value::Integer(i) if i128::from(*i) == i128::from(key) => Some(v),
            _ => None,
        })
    }

    /// The first of `keys` present, with the key found.
    pub(crate) fn get_any(&self, keys: &[i64]) -> Option<(i64, &Value)> {
        keys.iter().find_map(|k| self.get(*k).map(|v| (*k, v)))
    }

    pub(crate) fn contains(&self, key: i64) -> bool {
        self.get(key).is_some()
    }
}

fn describe_key(k: &Value) -> String {
    match k {
        Value::Integer(i) => i128::from(*i).to_string(),
        Value::Text(t) => format!("{t:?}"),
        _ => "(non-scalar)".into(),
    }
}

pub(crate) fn bytes<'v>(v: &'v Value, claim: &'static str) -> Result<&'v [u8], AttestationError> {
    match v {
        Value::Bytes(b) => Ok(b),
        other => Err(AttestationError::invalid(
            claim,
            format!("expected a byte string, got {}", kind(other)),
        )),
    }
}

pub(crate) fn text<'v>(v: &'v Value, claim: &'static str) -> Result<&'v str, AttestationError> {
    match v {
        Value::Text(t) => Ok(t),
        other => Err(AttestationError::invalid(
            claim,
            format!("expected a text string, got {}", kind(other)),
        )),
    }
}

pub(crate) fn int(v: &Value, claim: &'static str) -> Result<i128, AttestationError> {
    match v {
        Value::Integer(i) => Ok(i128::from(*i)),
        other => Err(AttestationError::invalid(
            claim,
            format!("expected an integer, got {}", kind(other)),
        )),
    }
}

pub(crate) fn array<'v>(v: &'v Value, claim: &'static str) -> Result<&'v [Value], AttestationError> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(AttestationError::invalid(
            claim,
            format!("expected an array, got {}", kind(other)),
        )),
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) => "an integer",
        Value::Bytes(_) => "a byte string",
        Value::Float(_) => "a float",
        Value::Text(_) => "a text string",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
        Value::Tag(..) => "a tagged item",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        _ => "an unknown item",
    }
}
