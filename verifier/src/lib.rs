//! # verifier — every trust decision fleetward makes, and nothing else
//!
//! A pure core in the manner of rustls: it takes bytes, trust anchors, keys, previously
//! stored state and `now`, and returns a verdict (plus the new state, where there is one).
//! It never touches the network, the disk, the clock or a random number generator:
//! time and randomness are arguments, so every decision is deterministic, testable and
//! fuzzable.
//!
//! - [`x509`]: provisioning CAs ([`x509::ProvisioningCa`]) in a [`x509::TrustStore`];
//!   device chain validation by **rustls-webpki** (never hand-rolled) with revocation by
//!   serial list and by CRL; device identity policy; CA registration checks with proof of
//!   possession and key-quality rules. Rejections are [`x509::ChainError`] /
//!   [`x509::RegistrationError`] values that name the failed check and the certificate.
//! - [`challenge`]: "peripheral authentication" — single-use, expiring 32-byte nonces and the
//!   secure element's ECDSA answer over them (raw `r‖s` or DER; the challenge signed directly
//!   as the digest, or hashed first), verified with aws-lc-rs.
//!
//! ```
//! use verifier::challenge::{Challenge, ChallengePolicy};
//! use verifier::Timestamp;
//!
//! let now = Timestamp::from_unix(1_790_000_000);
//! let issued = Challenge::issue("eval3-0209B0", [7u8; 32], now, &ChallengePolicy::default());
//! let redeemed = issued.redeem("eval3-0209B0", &[7u8; 32], now.plus_secs(5)).unwrap();
//! assert!(redeemed.used_at.is_some());
//! // A second answer with the same nonce is a replay.
//! assert!(redeemed.redeem("eval3-0209B0", &[7u8; 32], now.plus_secs(6)).is_err());
//! ```
#![forbid(unsafe_code)]

pub mod attestation;
pub mod challenge;
pub mod lorawan;
pub mod sigfox;
mod timestamp;
pub mod x509;

pub use timestamp::Timestamp;
