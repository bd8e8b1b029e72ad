//! Seconds since the Unix epoch, shown as RFC 3339.

use rustls_pki_types::UnixTime;
use serde::{Serialize, Serializer};
use std::fmt;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// An instant with one-second resolution (what X.509 and our events carry).
///
/// The verifier never reads a clock: callers pass `now` in as a `Timestamp` (or a
/// `rustls_pki_types::UnixTime`, which converts losslessly to the second).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// From seconds since 1970-01-01T00:00:00Z.
    pub const fn from_unix(secs: i64) -> Self {
        Timestamp(secs)
    }

    /// Seconds since 1970-01-01T00:00:00Z.
    pub const fn unix(self) -> i64 {
        self.0
    }

    /// Parses RFC 3339 (`2026-11-23T12:00:00Z`, offsets allowed).
    pub fn parse_rfc3339(s: &str) -> Result<Self, time::error::Parse> {
        OffsetDateTime::parse(s, &Rfc3339).map(|t| Timestamp(t.unix_timestamp()))
    }

    /// `self` moved forward by `secs` (saturating).
    pub const fn plus_secs(self, secs: u64) -> Self {
        let secs = if secs > i64::MAX as u64 { i64::MAX } else { secs as i64 };
        Timestamp(self.0.saturating_add(secs))
    }

    /// As the `UnixTime` rustls-webpki takes; instants before 1970 clamp to the epoch.
    pub fn to_unix_time(self) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(self.0.max(0) as u64))
    }
}

impl From<UnixTime> for Timestamp {
    fn from(t: UnixTime) -> Self {
        Timestamp(i64::try_from(t.as_secs()).unwrap_or(i64::MAX))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match OffsetDateTime::from_unix_timestamp(self.0)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
        {
            Some(s) => f.write_str(&s),
            None => write!(f, "@{}", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rfc3339() {
        let t = Timestamp::parse_rfc3339("2049-06-01T00:00:00Z").unwrap();
        assert_eq!(t.to_string(), "2049-06-01T00:00:00Z");
        assert_eq!(Timestamp::from(t.to_unix_time()), t);
    }

    #[test]
    fn out_of_range_still_displays() {
        assert_eq!(Timestamp::from_unix(i64::MAX).to_string(), format!("@{}", i64::MAX));
    }
}
