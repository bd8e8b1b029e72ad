//! Nonces: 32 random bytes, issued to one device, used once, before they expire.

use crate::Timestamp;
use serde::Serialize;
use subtle::ConstantTimeEq;

/// Length of a challenge nonce in bytes (the SE signs it as a SHA-256-sized digest).
pub const NONCE_LEN: usize = 32;

/// A challenge nonce. Compared in constant time.
#[derive(Clone, Copy)]
pub struct Nonce([u8; NONCE_LEN]);

impl Nonce {
    pub fn from_bytes(bytes: [u8; NONCE_LEN]) -> Self {
        Nonce(bytes)
    }

    /// From a slice that must be exactly [`NONCE_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ChallengeError> {
        <[u8; NONCE_LEN]>::try_from(bytes)
            .map(Nonce)
            .map_err(|_| ChallengeError::BadNonceLength { len: bytes.len() })
    }

    pub fn as_bytes(&self) -> &[u8; NONCE_LEN] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl PartialEq for Nonce {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Nonce {}

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Nonces are public once sent, but an outstanding one is a key to a pending answer:
        // show only a prefix.
        write!(f, "Nonce({}…)", &self.to_hex()[..8])
    }
}

impl Serialize for Nonce {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// How long challenges live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChallengePolicy {
    /// Seconds from issue until the answer is too late. Default 60.
    pub lifetime_secs: u64,
}

impl Default for ChallengePolicy {
    fn default() -> Self {
        ChallengePolicy { lifetime_secs: 60 }
    }
}

/// An issued challenge: the state the caller stores between issue and answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Challenge {
    pub device_id: String,
    pub nonce: Nonce,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// Set once answered; a used challenge never verifies again.
    pub used_at: Option<Timestamp>,
}

/// Why an answer's nonce was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "check", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChallengeError {
    #[error("nonce is {len} bytes; challenges are {NONCE_LEN} bytes")]
    BadNonceLength { len: usize },
    #[error("nonce was issued to device `{issued_to}`, not to `{presented_by}`")]
    WrongDevice { issued_to: String, presented_by: String },
    #[error("nonce does not match the challenge issued")]
    WrongNonce,
    #[error("challenge was already answered at {used_at} (replay)")]
    AlreadyUsed { used_at: Timestamp },
    #[error("challenge expired at {expires_at} (answered at {now})")]
    Expired { expires_at: Timestamp, now: Timestamp },
}

impl ChallengeError {
    /// A stable name for the failed check.
    pub fn check(&self) -> &'static str {
        match self {
            ChallengeError::BadNonceLength { .. } => "bad_nonce_length",
            ChallengeError::WrongDevice { .. } => "wrong_device",
            ChallengeError::WrongNonce => "wrong_nonce",
            ChallengeError::AlreadyUsed { .. } => "replayed_nonce",
            ChallengeError::Expired { .. } => "expired_nonce",
        }
    }
}

impl Challenge {
    /// A new challenge for `device_id` from 32 bytes of the caller's CSPRNG.
    pub fn issue(device_id: &str, random: [u8; NONCE_LEN], now: Timestamp, policy: &ChallengePolicy) -> Self {
        Challenge {
            device_id: device_id.to_owned(),
            nonce: Nonce(random),
            issued_at: now,
            expires_at: now.plus_secs(policy.lifetime_secs),
            used_at: None,
        }
    }

    /// Accepts an answer's nonce from `device_id` at `now`: returns the challenge marked used
    /// (store it before acting on the answer), or why the answer is refused.
    pub fn redeem(&self, device_id: &str, presented: &[u8], now: Timestamp) -> Result<Challenge, ChallengeError> {
        let presented = Nonce::from_slice(presented)?;
        if device_id != self.device_id {
            return Err(ChallengeError::WrongDevice {
                issued_to: self.device_id.clone(),
                presented_by: device_id.to_owned(),
            });
        }
        if presented != self.nonce {
            return Err(ChallengeError::WrongNonce);
        }
        if let Some(used_at) = self.used_at {
            return Err(ChallengeError::AlreadyUsed { used_at });
        }
        if now > self.expires_at {
            return Err(ChallengeError::Expired {
                expires_at: self.expires_at,
                now,
            });
        }
        Ok(Challenge {
            used_at: Some(now),
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_unix(1_800_000_000 + s)
    }

    #[test]
    fn single_use_and_expiry() {
        let policy = ChallengePolicy { lifetime_secs: 30 };
        let c = Challenge::issue("dev-1", [9; 32], t(0), &policy);
        assert_eq!(c.expires_at, t(30));
        let used = c
            .redeem("dev-1", &[9; 32], t(30))
            .expect("on the last second still valid");
        assert_eq!(used.used_at, Some(t(30)));
        assert_eq!(
            used.redeem("dev-1", &[9; 32], t(31)),
            Err(ChallengeError::AlreadyUsed { used_at: t(30) })
        );
        assert_eq!(
            c.redeem("dev-1", &[9; 32], t(31)),
            Err(ChallengeError::Expired {
                expires_at: t(30),
                now: t(31)
            })
        );
    }

    #[test]
    fn wrong_answers() {
        let c = Challenge::issue("dev-1", [9; 32], t(0), &ChallengePolicy::default());
        assert_eq!(c.redeem("dev-1", &[8; 32], t(1)), Err(ChallengeError::WrongNonce));
        assert!(matches!(
            c.redeem("dev-2", &[9; 32], t(1)),
            Err(ChallengeError::WrongDevice { .. })
        ));
        assert_eq!(
            c.redeem("dev-1", &[9; 31], t(1)),
            Err(ChallengeError::BadNonceLength { len: 31 })
        );
    }

    #[test]
    fn debug_does_not_print_the_whole_nonce() {
        let n = Nonce::from_bytes([0xab; 32]);
        assert_eq!(format!("{n:?}"), "Nonce(abababab…)");
    }
}
