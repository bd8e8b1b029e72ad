//! Device identity: which part of a device certificate names the device, per provisioning CA.
//!
//! The identity becomes the MQTT client id and the `{id}` of `devices/{id}/…` topics, so it is
//! validated to be safe there (and as a NATS subject token): see [`DeviceId::new`].

use super::cert::{ParsedCert, attribute_text};
use const_oid::db::rfc4519::{COMMON_NAME, SERIAL_NUMBER};
use regex::Regex;
use serde::{Serialize, Serializer};
use std::fmt;

/// The longest device id we accept (bytes).
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// A validated device identity.
///
/// 1 to [`MAX_DEVICE_ID_LEN`] printable ASCII characters, without the MQTT topic
/// separator and wildcards (`/`, `+`, `#`), the NATS wildcards (`*`, `>`), space, or control
/// characters; it may not start with `$` (reserved topics).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn new(id: &str) -> Result<Self, IdentityError> {
        if id.is_empty() {
            return Err(IdentityError::Invalid {
                value: String::new(),
                reason: "empty".into(),
            });
        }
        if id.len() > MAX_DEVICE_ID_LEN {
            return Err(IdentityError::Invalid {
                value: truncate(id),
                reason: format!("{} bytes long (maximum {MAX_DEVICE_ID_LEN})", id.len()),
            });
        }
        if let Some((at, c)) = id.char_indices().find(|(_, c)| !allowed(*c)) {
            return Err(IdentityError::Invalid {
                value: truncate(id),
                reason: format!(
                    "character {c:?} at byte {at} is not allowed in a device id (it must be safe in MQTT topics)"
                ),
            });
        }
        if id.starts_with('$') {
            return Err(IdentityError::Invalid {
                value: truncate(id),
                reason: "starts with '$' (reserved for system topics)".into(),
            });
        }
        Ok(DeviceId(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn allowed(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '/' | '+' | '#' | '*' | '>')
}

/// Identities are echoed in errors; keep the echo bounded and printable.
fn truncate(s: &str) -> String {
    s.chars()
        .take(MAX_DEVICE_ID_LEN)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Where the identity comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// Subject commonName (STSAFE: `<profile>-<die serial>`). The default.
    #[default]
    CommonName,
    /// Subject serialNumber attribute (OID 2.5.4.5).
    SerialNumber,
    /// Lower-case hex SHA-256 of the SubjectPublicKeyInfo: the key is the identity.
    SpkiSha256,
}

impl IdentitySource {
    /// `cn`, `serial_number`, `spki_sha256` (the names config and the API use).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cn" | "common_name" | "common-name" => Some(IdentitySource::CommonName),
            "serial_number" | "serial-number" | "serialNumber" => Some(IdentitySource::SerialNumber),
            "spki_sha256" | "spki-sha256" => Some(IdentitySource::SpkiSha256),
            _ => None,
        }
    }
}

/// How a provisioning CA's devices are named.
#[derive(Clone, Debug, Default)]
pub struct IdentityPolicy {
    source: IdentitySource,
    pattern: Option<(String, Regex)>,
}

impl PartialEq for IdentityPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.pattern() == other.pattern()
    }
}

impl Eq for IdentityPolicy {}

/// Why an identity policy cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("identity pattern does not compile: {0}")]
    BadPattern(String),
    #[error("an identity pattern applies to the CN or serialNumber, not to the SPKI hash")]
    PatternOnSpki,
    #[error("identity pattern must have at most one capture group (or a group named `id`)")]
    AmbiguousGroups,
}

impl IdentityPolicy {
    /// `pattern`, if given, must match the **whole** attribute (it is anchored for you); the
    /// identity is its group named `id`, else its only capture group, else the whole match.
    /// E.g. `eval3-([0-9A-F]+)` turns `eval3-0209B0846159E439520139` into `0209B0846159E439520139`.
    pub fn new(source: IdentitySource, pattern: Option<&str>) -> Result<Self, PolicyError> {
        let pattern = match pattern {
            None => None,
            Some(_) if source == IdentitySource::SpkiSha256 => return Err(PolicyError::PatternOnSpki),
            Some(p) => {
                let re = Regex::new(&format!("^(?:{p})$")).map_err(|e| PolicyError::BadPattern(e.to_string()))?;
                let named = re.capture_names().flatten().any(|n| n == "id");
                if !named && re.captures_len() > 2 {
                    return Err(PolicyError::AmbiguousGroups);
                }
                Some((p.to_owned(), re))
            }
        };
        Ok(IdentityPolicy { source, pattern })
    }

    pub fn source(&self) -> IdentitySource {
        self.source
    }

    pub fn pattern(&self) -> Option<&str> {
        self.pattern.as_ref().map(|(p, _)| p.as_str())
    }

    /// The device id of `cert` under this policy.
    pub(crate) fn derive(&self, cert: &ParsedCert) -> Result<DeviceId, IdentityError> {
        let raw = match self.source {
            IdentitySource::CommonName => attribute_text(cert.subject(), COMMON_NAME)
                .ok_or(IdentityError::MissingAttribute { attribute: "CN" })?,
            IdentitySource::SerialNumber => {
                attribute_text(cert.subject(), SERIAL_NUMBER).ok_or(IdentityError::MissingAttribute {
                    attribute: "serialNumber",
                })?
            }
            IdentitySource::SpkiSha256 => return DeviceId::new(&cert.info.spki_sha256),
        };
        let id = match &self.pattern {
            None => raw,
            Some((p, re)) => {
                let caps = re.captures(&raw).ok_or_else(|| IdentityError::PatternMismatch {
                    value: truncate(&raw),
                    pattern: p.clone(),
                })?;
                caps.name("id")
                    .or_else(|| caps.get(1))
                    .or_else(|| caps.get(0))
                    .map(|m| m.as_str().to_owned())
                    .unwrap_or_default()
            }
        };
        DeviceId::new(&id)
    }
}

/// Why no valid identity could be taken from a certificate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
#[non_exhaustive]
pub enum IdentityError {
    #[error("subject has no {attribute} attribute")]
    MissingAttribute { attribute: &'static str },
    #[error("`{value}` does not match the CA's identity pattern `{pattern}`")]
    PatternMismatch { value: String, pattern: String },
    #[error("`{value}` is not a valid device id: {reason}")]
    Invalid { value: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_charset() {
        assert!(DeviceId::new("eval3-0209B0846159E439520139").is_ok());
        assert!(DeviceId::new("a.b:c@d_e=f~g").is_ok());
        for bad in [
            "", "a/b", "a+b", "a#b", "a\0b", "a b", "a*b", "a>b", "$SYS", "é", "a\nb",
        ] {
            assert!(DeviceId::new(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(DeviceId::new(&"x".repeat(MAX_DEVICE_ID_LEN)).is_ok());
        assert!(DeviceId::new(&"x".repeat(MAX_DEVICE_ID_LEN + 1)).is_err());
    }

    #[test]
    fn pattern_rules() {
        assert_eq!(
            IdentityPolicy::new(IdentitySource::SpkiSha256, Some("x")),
            Err(PolicyError::PatternOnSpki)
        );
        assert_eq!(
            IdentityPolicy::new(IdentitySource::CommonName, Some("(a)(b)")),
            Err(PolicyError::AmbiguousGroups)
        );
        assert!(IdentityPolicy::new(IdentitySource::CommonName, Some("(?P<id>a)(b)")).is_ok());
        assert!(matches!(
            IdentityPolicy::new(IdentitySource::CommonName, Some("(")),
            Err(PolicyError::BadPattern(_))
        ));
    }
}
