//! Challenge-response ("peripheral authentication"): prove the device holds its key *now*.
//!
//! 1. [`Challenge::issue`] a 32-byte nonce (randomness from the caller), with an expiry.
//!    The caller stores it.
//! 2. The device's secure element signs it; the answer comes back with the nonce.
//! 3. [`Challenge::redeem`] checks that the nonce is the one issued to that device, unused and
//!    unexpired, and returns the used state to store — single use is the caller's write,
//!    the verifier's check.
//! 4. [`DeviceKey::verify_challenge`] checks the signature: raw `r‖s` or DER, with the
//!    challenge signed directly as the digest (STSELib) or hashed first (X-CUBE-SAFEA1).

mod nonce;
mod signature;

pub use nonce::{Challenge, ChallengeError, ChallengePolicy, NONCE_LEN, Nonce};
pub use signature::{CoseHash, Curve, DeviceKey, DigestMode, SignatureError, SignatureFormat};
